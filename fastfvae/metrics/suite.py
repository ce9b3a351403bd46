"""``evaluate``: the metric battery with one seed, as training and ``fastfvae evaluate`` run it.

Metrics (``metrics="all"``, a name, or a list of names): factor_vae, beta_vae, mig, dci, sap,
modularity_explicitness, unsupervised — disentanglement_lib's battery (Locatello et al. 2019)
less IRS.

Presets (per-point protocol parameters never change between presets, only how many points are
drawn, so a preset is a noisier estimate of the same quantity, not a different metric):

- ``"default"``: disentanglement_lib's sizes. Images the protocols encode: FactorVAE 10,000 +
  15,000 * 64 = 970,000; beta-VAE 2 * 15,000 * 64 = 1,920,000; MIG 10,000; DCI, SAP,
  modularity/explicitness 15,000 each; unsupervised 10,000: ~2.95 million in all, ~11 minutes
  of encoding on this project's 2-core CPU. The code table (code_table.py) encodes dSprites'
  737,280 grid points once instead, so evaluate uses it here (``code_table="auto"``).
  DCI runs with the "batched" estimator: scikit-learn's GradientBoostingClassifier algorithm
  (disentanglement_lib's classifier) with every factor's trees grown together (_boosting.py),
  ~16 s against ~370 CPU-s for the "exact" scikit-learn fits on dSprites' five factors; its
  scores agree with exact within sampling noise (dci.py gives the measurement). ``dci={"estimator":
  "exact"}`` runs scikit-learn itself.
- ``"fast"``: FactorVAE 5,000 + (500 + 300) * 64 = 56,200 images; beta-VAE 2 * (250 + 150) * 64 =
  51,200; MIG and unsupervised 10,000 each; DCI, SAP, modularity/explicitness 5,000 + 2,500 each:
  ~150,000 images, fewer than the grid, so no table. Eval accuracies then carry a sampling error
  of a few percent (binomial: sqrt(p(1-p)/num_eval) <= 0.029 for FactorVAE, <= 0.041 for
  beta-VAE); MIG keeps its full sample because its binned MI is biased upward at small sizes.
"""
from __future__ import annotations

import inspect
import math
import time

from fastfvae.metrics import _common
from fastfvae.metrics.beta_vae import beta_vae_metric
from fastfvae.metrics.code_table import DEFAULT_TABLE_BATCH_SIZE, CodeTable, encode_code_table
from fastfvae.metrics.dci import dci
from fastfvae.metrics.factor_vae import factor_vae_metric
from fastfvae.metrics.mig import mig
from fastfvae.metrics.modularity_explicitness import modularity_explicitness
from fastfvae.metrics.sap import sap
from fastfvae.metrics.unsupervised import unsupervised_scores

METRICS = {
    "factor_vae": factor_vae_metric,
    "beta_vae": beta_vae_metric,
    "mig": mig,
    "dci": dci,
    "sap": sap,
    "modularity_explicitness": modularity_explicitness,
    "unsupervised": unsupervised_scores,
}

# The headline numbers of each metric, for printed tables (every key is in the metric's result).
SCORE_KEYS = {
    "factor_vae": ("eval_accuracy",),
    "beta_vae": ("eval_accuracy",),
    "mig": ("score",),
    "dci": ("dci_disentanglement", "dci_completeness", "dci_informativeness_test"),
    "sap": ("sap_score",),
    "modularity_explicitness": ("modularity_score", "explicitness_score_test"),
    "unsupervised": ("gaussian_total_correlation", "gaussian_wasserstein_correlation_norm", "mutual_info_score"),
}

PRESETS = {
    "default": {
        "factor_vae": dict(batch_size=64, num_train=10000, num_eval=5000, num_variance_estimate=10000, prune_threshold=0.05),
        "beta_vae": dict(batch_size=64, num_train=10000, num_eval=5000),
        "mig": dict(num_train=10000, num_bins=20),
        "dci": dict(num_train=10000, num_test=5000, estimator="batched"),
        "sap": dict(num_train=10000, num_test=5000, continuous_factors=False),
        "modularity_explicitness": dict(num_train=10000, num_test=5000, num_bins=20),
        "unsupervised": dict(num_train=10000, num_bins=20),
    },
    "fast": {
        "factor_vae": dict(batch_size=64, num_train=500, num_eval=300, num_variance_estimate=5000, prune_threshold=0.05),
        "beta_vae": dict(batch_size=64, num_train=250, num_eval=150),
        "mig": dict(num_train=10000, num_bins=20),
        "dci": dict(num_train=5000, num_test=2500, estimator="batched"),
        "sap": dict(num_train=5000, num_test=2500, continuous_factors=False),
        "modularity_explicitness": dict(num_train=5000, num_test=2500, num_bins=20),
        "unsupervised": dict(num_train=10000, num_bins=20),
    },
}

# Lookups per call when the codes come from the table: no images are rendered, so large chunks.
TABLE_LOOKUP_BATCH = 1 << 16


def protocol_images(name: str, params: dict) -> int:
    """Images metric ``name`` encodes with ``params`` (its keyword arguments; defaults filled in)."""
    p = {k: v.default for k, v in inspect.signature(METRICS[name]).parameters.items()
         if v.default is not inspect.Parameter.empty}
    p.update(params)
    if name == "factor_vae":
        return p["num_variance_estimate"] + (p["num_train"] + p["num_eval"]) * p["batch_size"]
    if name == "beta_vae":
        return 2 * p["batch_size"] * (p["num_train"] + p["num_eval"])
    if name in ("mig", "unsupervised"):
        return p["num_train"]
    return p["num_train"] + p["num_test"]


def _metric_names(metrics) -> tuple[str, ...]:
    if metrics == "all":
        return tuple(METRICS)
    names = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    if not names:
        raise ValueError(f"metrics: expected 'all', a metric name or a non-empty list of them, got {metrics!r}")
    for name in names:
        _common.check_choice("metrics", name, tuple(METRICS))
    return names


def _check_overrides(overrides: dict) -> None:
    for name, extra in overrides.items():
        if name not in METRICS:
            raise TypeError(f"evaluate: unexpected keyword {name!r}; per-metric overrides are named after a metric, "
                            f"one of {tuple(METRICS)}")
        if extra is not None and not isinstance(extra, dict):
            raise TypeError(f"{name}: expected a dict of keyword overrides, got {type(extra).__name__}")
        if extra and ("seed" in extra or "generator" in extra):
            raise ValueError(f"{name}: pass the seed to evaluate, not in the overrides, got {sorted(extra)}")


def _choose_table(code_table, sizes, needed: int, grid_limit: int, random_observations: bool = False) -> tuple[bool, str]:
    """(build or use the table?, why) for code_table = "auto" | True | False | CodeTable.
    ``random_observations``: the data set draws each observation at random given its factors
    (the dSprites variants' colours and noise, a hidden factor), so "auto" never builds a table."""
    grid = math.prod(sizes)
    if isinstance(code_table, CodeTable):
        return True, "a code table was passed"
    if code_table is True:
        return True, "code_table=True"
    if code_table is False:
        return False, "code_table=False"
    if random_observations:
        return False, "the data set draws each observation at random given its factors: one code per grid point would not stand for them"
    if grid > grid_limit:
        return False, f"the factor grid has {grid} points, more than the table limit {grid_limit}"
    if grid < needed:
        return True, f"encoding the {grid} grid points once costs fewer encoder calls than the protocols' {needed} images"
    return False, f"the protocols encode {needed} images, no more than the {grid} grid points"


def evaluate(
    encode,
    dataset,
    *,
    seed: int = 0,
    preset: str = "default",
    metrics="all",
    encode_batch_size: int = _common.DEFAULT_ENCODE_BATCH_SIZE,
    data_device=None,
    code_table="auto",
    table_batch_size: int = DEFAULT_TABLE_BATCH_SIZE,
    table_grid_limit: int = 4_000_000,
    **overrides,
) -> dict:
    """Run the chosen metrics on ``encode`` and ``dataset``.

    seed: each metric draws from its own ``torch.Generator().manual_seed(seed)``, so
    ``evaluate(...)["mig"]`` equals ``mig(encode, dataset, seed=seed, ...)`` with the same parameters.
    preset: "default" (disentanglement_lib's sizes) or "fast" (module docstring: costs).
    metrics: "all", one name or a list of names from METRICS.
    encode_batch_size, data_device: passed to every metric (images per encode call; device for
    dataset.images, e.g. "cuda" to render on the GPU).
    code_table: "auto" (build the encode-once table when it costs fewer encoder calls than the
    protocols, and the grid has at most ``table_grid_limit`` points), True, False, or a CodeTable
    built earlier with encode_code_table (its codes are used as they are). table_batch_size:
    images per encode call while building the table.
    Per-metric keyword overrides: a dict named after the metric, e.g. ``factor_vae={"num_train": 2000}``
    or ``dci={"estimator": "exact"}``.

    Returns {metric name: its result dict (scores, parameters, seed, seconds), ..., "preset",
    "metrics" (the names run), "seed", "code_table" (used, reason, and the table's size and build
    seconds when used), "protocol_images" (what the protocols would encode), "seconds"}. Each
    metric's dict also gets ``cpu_seconds`` (process CPU time, all threads).
    With the table, each metric's ``codes_from`` is "code_table" and it reports
    ``num_table_lookups`` instead of ``num_images_encoded``.
    Call it with the model in eval mode; it runs under torch.no_grad.
    """
    start_time = time.perf_counter()
    _common.check_choice("preset", preset, tuple(PRESETS))
    names = _metric_names(metrics)
    _check_overrides(overrides)
    if not (code_table in ("auto", True, False) or isinstance(code_table, CodeTable)):
        raise ValueError(f"code_table: expected 'auto', True, False or a CodeTable, got {code_table!r}")
    table_batch_size = _common.check_positive_int("table_batch_size", table_batch_size)
    table_grid_limit = _common.check_positive_int("table_grid_limit", table_grid_limit)
    sizes = _common.check_dataset(dataset)

    params = {name: {**PRESETS[preset][name], **(overrides.get(name) or {})} for name in names}
    needed = sum(protocol_images(name, params[name]) for name in names)
    use_table, reason = _choose_table(code_table, sizes, needed, table_grid_limit,
                                      bool(getattr(dataset, "random_observations", False)))
    result: dict = {"preset": preset, "metrics": list(names), "seed": seed, "protocol_images": needed}
    if use_table:
        cpu_start = time.process_time()
        table = code_table if isinstance(code_table, CodeTable) else encode_code_table(
            encode, dataset, encode_batch_size=table_batch_size, data_device=data_device)
        result["code_table"] = {"used": True, "reason": reason, **table.describe(),
                                "cpu_seconds": time.process_time() - cpu_start}
        metric_encode, metric_data, device_kw = table.encode, table.source(dataset), {}
        batch = max(encode_batch_size, TABLE_LOOKUP_BATCH)
    else:
        result["code_table"] = {"used": False, "reason": reason}
        metric_encode, metric_data, device_kw = encode, dataset, {"data_device": data_device}
        batch = encode_batch_size

    for name in names:
        cpu_start = time.process_time()
        out = METRICS[name](metric_encode, metric_data, seed=seed, encode_batch_size=batch, **device_kw, **params[name])
        # CPU seconds of this process (all its threads): on a shared machine a steadier measure than wall time.
        out["cpu_seconds"] = time.process_time() - cpu_start
        if use_table:
            out["num_table_lookups"] = out.pop("num_images_encoded")
            out["codes_from"] = "code_table"
        else:
            out["codes_from"] = "encoder"
        result[name] = out
    result["seconds"] = time.perf_counter() - start_time
    return result


def format_table(result: dict) -> str:
    """A printed table of evaluate's result: one line per metric, its headline scores and seconds."""
    lines = []
    for name in result.get("metrics", [n for n in METRICS if n in result]):
        entry = result.get(name)
        if not isinstance(entry, dict):
            continue
        scores = ", ".join(f"{key} {entry[key]:.4f}" for key in SCORE_KEYS[name] if isinstance(entry.get(key), (int, float)))
        lines.append(f"  {name:<24} {scores}  ({entry.get('seconds', float('nan')):.1f} s)")
    table = result.get("code_table")
    if isinstance(table, dict) and table.get("used"):
        lines.append(f"  (codes from an encode-once table of {table['num_points']} points, built in {table['seconds']:.1f} s)")
    return "\n".join(lines)
