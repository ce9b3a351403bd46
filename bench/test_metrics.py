"""The metric battery: disentanglement_lib's seven metrics at its default sizes on the
paper's dSprites encoder, through ``fastfvae.metrics.evaluate``.

Group ``metrics-battery-default-{device}``: one call of evaluate(preset="default", metrics="all")
(the code table is built inside the timed call), one round (minutes on a CPU). ``extra_info``
holds the time of the table and of each metric, the scores and the table decision; bench/report.py
leaves these rows out of its ratio tables (there is no baseline implementation to divide by:
the issue's reference figure is the ~13 minutes the previous three-metric protocol took here).

Group ``metrics-dci-{device}``: DCI's estimators on the same 10,000 + 5,000 codes, their times
and scores side by side: "batched" (the default: scikit-learn's algorithm, all factors' trees at
once, on the codes' device), "hist" and, with FASTFVAE_BENCH_DCI_EXACT=1, "exact" (scikit-learn's
GradientBoostingClassifier itself, minutes on a CPU).

The encoder is fastfvae.models.Encoder (z 10) with its initial weights, or the encoder of the
checkpoint named by FASTFVAE_BENCH_CHECKPOINT (a trained model's codes are what the DCI
agreement should be judged on). Quick mode (CI's smoke run): a few hundred points per metric on
a 288-point corner of the dSprites grid, no table.
"""
from __future__ import annotations

import os
import time

import pytest
import torch

from bench import common


def _encoder(device: str):
    """encode(uint8 images (n, 1, 64, 64)) -> means (n, 10) float32 on device, and its
    description: fastfvae.train.evaluation's encoder of the trainer and ``fastfvae evaluate``."""
    from fastfvae.models import VAE
    from fastfvae.train.evaluation import encoder_mean_fn

    torch.manual_seed(0)
    vae = VAE(10)   # its encoder is built first: the same initial weights as Encoder(10) after the seed
    source = "initial weights (seed 0)"
    path = os.environ.get("FASTFVAE_BENCH_CHECKPOINT")
    if path:
        vae.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["vae"])
        source = f"checkpoint {path}"
    vae = vae.to(device, memory_format=torch.channels_last).eval()
    return encoder_mean_fn(vae, torch.device(device)), source


class _SmallGrid:
    """Quick mode's data set: dSprites images on a corner of its grid (few classes per factor, so
    the per-class classifiers of DCI, SAP and explicitness stay cheap)."""

    factor_sizes = (3, 2, 3, 4, 4)

    def __init__(self):
        from fastfvae.data import DSprites

        self.full = DSprites()

    def sample_factors(self, n: int, generator: torch.Generator) -> torch.Tensor:
        sizes = torch.tensor(self.factor_sizes, dtype=torch.float64)
        return (torch.rand(n, len(self.factor_sizes), generator=generator, dtype=torch.float64) * sizes).long()

    def images(self, factors: torch.Tensor) -> torch.Tensor:
        return self.full.images(factors)


def _data():
    from fastfvae.data import DSprites

    return DSprites() if common.full_mode() else _SmallGrid()


QUICK = dict(
    factor_vae=dict(num_train=20, num_eval=10, num_variance_estimate=200),
    beta_vae=dict(num_train=20, num_eval=10, batch_size=8),
    mig=dict(num_train=300), dci=dict(num_train=200, num_test=100), sap=dict(num_train=200, num_test=100),
    modularity_explicitness=dict(num_train=200, num_test=100), unsupervised=dict(num_train=200),
)


def _summary(result: dict) -> dict:
    from fastfvae.metrics.suite import SCORE_KEYS

    info = {"code_table": result["code_table"], "protocol_images": result["protocol_images"]}
    for name in result["metrics"]:
        info[f"{name}_seconds"] = result[name]["seconds"]
        info[f"{name}_cpu_seconds"] = result[name]["cpu_seconds"]
        for key in SCORE_KEYS[name]:
            info[f"{name}.{key}"] = result[name][key]
    return info


@pytest.mark.parametrize("device", common.devices())
def test_metric_battery(benchmark, device):
    from fastfvae.metrics import evaluate, format_table

    encode, source = _encoder(device)
    data_device = device if device == "cuda" else None
    kwargs = {} if common.full_mode() else dict(code_table=False, **QUICK)
    # FASTFVAE_BENCH_DCI=exact|hist|batched: the battery with that DCI estimator (default: batched).
    estimator = os.environ.get("FASTFVAE_BENCH_DCI")
    if estimator:
        kwargs["dci"] = {**kwargs.get("dci", {}), "estimator": estimator}
    benchmark.group = f"metrics-battery-default-{device}"
    holder = {}

    def run():
        common.synchronize(device)
        holder["result"] = evaluate(encode, _data(), seed=0, preset="default", metrics="all",
                                    data_device=data_device, **kwargs)
        common.synchronize(device)

    benchmark.pedantic(run, rounds=1, iterations=1)
    result = holder["result"]
    benchmark.extra_info.update(op="metrics", device=device, encoder=source, seconds=result["seconds"],
                                **_summary(result))
    print(f"\nmetric battery on {device} ({source}), {result['seconds']:.1f} s in all:\n{format_table(result)}")
    cpu = {name: round(result[name]["cpu_seconds"], 1) for name in result["metrics"]}
    print(f"  CPU seconds (all threads): table {result['code_table'].get('cpu_seconds', 0):.1f}, {cpu}")


@pytest.mark.parametrize("device", common.devices())
def test_dci_estimators(benchmark, device):
    """The estimators on the same codes: times and scores (batched runs on the codes' device)."""
    from fastfvae.metrics._common import sample_codes
    from fastfvae.metrics.dci import dci_from_codes

    encode, source = _encoder(device)
    n_train, n_test = (10000, 5000) if common.full_mode() else (200, 100)
    data = _data()
    gen = torch.Generator().manual_seed(0)
    codes_train, factors_train = sample_codes(encode, data, data.factor_sizes, n_train, gen, 1024)
    codes_test, factors_test = sample_codes(encode, data, data.factor_sizes, n_test, gen, 1024)
    benchmark.group = f"metrics-dci-{device}"
    estimators = ["batched", "hist"] + (["exact"] if os.environ.get("FASTFVAE_BENCH_DCI_EXACT") == "1" else [])
    out = {}

    def run():
        for estimator in estimators:
            start = time.perf_counter()
            out[estimator] = dci_from_codes(codes_train, factors_train, codes_test, factors_test,
                                            estimator=estimator, random_state=0)
            out[estimator]["seconds"] = time.perf_counter() - start

    benchmark.pedantic(run, rounds=1, iterations=1)
    keys = ("dci_disentanglement", "dci_completeness", "dci_informativeness_train", "dci_informativeness_test")
    info = {"op": "metrics-dci", "device": device, "encoder": source, "num_train": n_train, "num_test": n_test}
    for estimator, res in out.items():
        info[f"{estimator}_seconds"] = res["seconds"]
        for key in keys:
            info[f"{estimator}.{key}"] = res[key]
    benchmark.extra_info.update(info)
    print("\nDCI estimators on the same codes:")
    for estimator, res in out.items():
        print(f"  {estimator:<7} {res['seconds']:7.1f} s  " + ", ".join(f"{k} {res[k]:.4f}" for k in keys))
