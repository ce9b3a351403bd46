"""``evaluate``: the three metrics with one seed, as training and ``fastfvae evaluate`` run them.

Presets (per-vote protocol parameters never change between presets, only how many votes/points
are drawn, so a preset is a noisier estimate of the same quantity, not a different metric):

- ``"default"``: disentanglement_lib's defaults. Images encoded: FactorVAE 10,000 + 15,000 * 64 =
  970,000; beta-VAE 2 * 15,000 * 64 = 1,920,000; MIG 10,000: about 2.9 million in all. The paper's
  dSprites encoder runs at ~4,400 images/s on this 2-core CPU when it has the cores to itself
  (0.51 CPU-s per 1,000 images; procedural rendering adds 0.05), so that is ~13 minutes on the CPU;
  on a GPU it is seconds of encoding (pass data_device="cuda" to render there too).
- ``"fast"``: FactorVAE 5,000 + (500 + 300) * 64 = 56,200 images; beta-VAE 2 * (250 + 150) * 64 =
  51,200; MIG 10,000: about 117,000 images, ~35 s on an idle 2-core CPU (measured 77 CPU-s, i.e.
  165 s wall, on a machine loaded 3x over). Eval accuracies then carry a sampling error of a few
  percent (binomial: sqrt(p(1-p)/num_eval) <= 0.029 for FactorVAE, <= 0.041 for beta-VAE); MIG
  keeps its full sample because its binned MI is biased upward at small sample sizes.
"""
from __future__ import annotations

import time

from fastfvae.metrics import _common
from fastfvae.metrics.beta_vae import beta_vae_metric
from fastfvae.metrics.factor_vae import factor_vae_metric
from fastfvae.metrics.mig import mig

METRICS = {"factor_vae": factor_vae_metric, "beta_vae": beta_vae_metric, "mig": mig}

PRESETS = {
    "default": {
        "factor_vae": dict(batch_size=64, num_train=10000, num_eval=5000, num_variance_estimate=10000, prune_threshold=0.05),
        "beta_vae": dict(batch_size=64, num_train=10000, num_eval=5000),
        "mig": dict(num_train=10000, num_bins=20),
    },
    "fast": {
        "factor_vae": dict(batch_size=64, num_train=500, num_eval=300, num_variance_estimate=5000, prune_threshold=0.05),
        "beta_vae": dict(batch_size=64, num_train=250, num_eval=150),
        "mig": dict(num_train=10000, num_bins=20),
    },
}


def evaluate(
    encode,
    dataset,
    *,
    seed: int = 0,
    preset: str = "default",
    metrics: tuple[str, ...] = ("factor_vae", "beta_vae", "mig"),
    encode_batch_size: int = _common.DEFAULT_ENCODE_BATCH_SIZE,
    data_device=None,
    factor_vae: dict | None = None,
    beta_vae: dict | None = None,
    mig: dict | None = None,
) -> dict:
    """Run the chosen metrics on ``encode`` and ``dataset``.

    seed: each metric draws from its own ``torch.Generator().manual_seed(seed)``, so
    ``evaluate(...)["mig"]`` equals ``mig(encode, dataset, seed=seed, ...)`` with the same parameters.
    preset: "default" (disentanglement_lib) or "fast" (see the module docstring for costs).
    encode_batch_size, data_device: passed to every metric (images per encode call; device for
    dataset.images, e.g. "cuda" to render on the GPU).
    factor_vae / beta_vae / mig: keyword overrides for one metric, e.g. ``factor_vae={"num_train": 2000}``.

    Returns {"factor_vae": dict, "beta_vae": dict, "mig": dict, "preset": str, "seconds": float}
    (only the chosen metrics; each metric's dict holds its scores, parameters and seconds).
    Call it with the model in eval mode; it runs under torch.no_grad.
    """
    start_time = time.perf_counter()
    _common.check_choice("preset", preset, tuple(PRESETS))
    if isinstance(metrics, str):
        metrics = (metrics,)
    for name in metrics:
        _common.check_choice("metrics", name, tuple(METRICS))
    overrides = {"factor_vae": factor_vae, "beta_vae": beta_vae, "mig": mig}
    for name, extra in overrides.items():
        if extra is not None and not isinstance(extra, dict):
            raise TypeError(f"{name}: expected a dict of keyword overrides, got {type(extra).__name__}")
        if extra and ("seed" in extra or "generator" in extra):
            raise ValueError(f"{name}: pass the seed to evaluate, not in the overrides, got {sorted(extra)}")
    _common.check_dataset(dataset)

    result: dict = {"preset": preset}
    for name in metrics:
        params = {**PRESETS[preset][name], "encode_batch_size": encode_batch_size, "data_device": data_device,
                  **(overrides[name] or {})}
        result[name] = METRICS[name](encode, dataset, seed=seed, **params)
    result["seconds"] = time.perf_counter() - start_time
    return result
