"""DCI: disentanglement, completeness, informativeness (Eastwood & Williams 2018), the protocol
of disentanglement_lib ``evaluation/metrics/dci.py`` (gin defaults num_train 10000, num_test 5000).

Protocol:

1. Encode ``num_train`` random points, then ``num_test`` more: codes (N, D), factors (N, K).
2. For every factor k, a gradient-boosted-trees classifier predicts factor k from the D codes
   (trained on the training points). Its feature importances are column k of the importance
   matrix R (D, K); its accuracy on the training and test points is factor k's informativeness.
3. disentanglement = sum_d rho_d (1 - H_K(R[d, :])), with H_K the entropy in base K of row d
   normalised to sum 1, and rho_d = sum_k R[d, k] / sum R (uniform 1/D when R is all zero).
   completeness = sum_k rho_k (1 - H_D(R[:, k])), the same on the columns (weights sum_d R[d, k] / sum R).
   informativeness_train / _test = mean over factors of the classifiers' accuracy.

Estimators (``estimator=``):

- ``"batched"`` (the default): scikit-learn's ``GradientBoostingClassifier()`` algorithm with its
  defaults (100 stages, learning rate 0.1, depth 3, every split point, Newton leaf values,
  impurity-decrease importances), re-implemented in _boosting.py so that one stage grows the
  trees of every class of every factor together: in the CPU library (kernels/cpu/
  boosting_trees.cpp, a presorted scan per tree) on a CPU, as torch operations elsewhere. Its
  trees are scikit-learn's except where two splits are exactly as good (ties: both pick one at
  random), so its scores agree with "exact" within sampling noise (measured below).
- ``"exact"``: scikit-learn's ``GradientBoostingClassifier()`` itself, importances
  ``feature_importances_`` — disentanglement_lib's classifier. It is slow (measured on this
  project's 2-core CPU, one core, 10,000 ten-dimensional codes: 8.6 s for 3 classes, 17 s for 6,
  115 s for 40; ~370 CPU-s for dSprites' five factors), so the K factors are fitted in parallel
  threads (the tree builder releases the GIL).
- ``"hist"``: scikit-learn's ``HistGradientBoostingClassifier`` with the same boosting settings
  (100 iterations, learning rate 0.1, depth 3, leaves of one point, no L2, no early stopping)
  on 255 quantile bins per code; importance of code d = total split gain of the splits on d over
  all trees, normalised to sum 1 (HistGradientBoosting has no ``feature_importances_``, so this
  reads the fitted trees' node table). A different algorithm (Newton split gains): it does NOT
  agree with exact within sampling noise (below); kept for comparison.

Measured agreement (this project's shared 2-core CPU; dSprites; codes of the paper's encoder
after 1,500 FactorVAE steps (runs/default); 10,000 training / 5,000 test points):

| on the same points (seeds 0, 1) | disentanglement | completeness | informativeness train | test |
|---|---|---|---|---|
| exact, seed 0 / 1 | 0.0853 / 0.0867 | 0.1062 / 0.1115 | 0.6834 / 0.6824 | 0.3590 / 0.3635 |
| batched - exact | -0.0008 / +0.0005 | -0.0000 / +0.0002 | -0.0014 / +0.0005 | -0.0006 / -0.0002 |
| hist - exact | +0.035 / +0.039 | +0.033 / +0.032 | -0.052 / -0.058 | +0.020 / +0.016 |
| seed-to-seed std, batched (5 seeds) | 0.0021 | 0.0036 | 0.0015 | 0.0038 |

batched agrees with exact well within sampling noise (importance matrices within 0.006); hist
does not (~17 standard deviations on disentanglement). Time: batched 13-20 s wall on 2 cores
(the five factors together), exact 490-530 s wall on the same (loaded) machine.

Earlier measurement of hist (codes after 361 steps, seed 0), exact / hist: disentanglement 0.150
/ 0.168, completeness 0.171 / 0.185, test informativeness 0.321 / 0.330, against a seed-to-seed
standard deviation of hist of 0.0013, 0.0038 and 0.0022.

"exact" and "hist" run one fit per factor, in ``n_jobs`` threads (default: one per factor up to the
CPU count), each fit on one OpenMP/BLAS thread (see _sklearn.fit_counting_warnings for the
measurement behind that); "batched" makes one call for all factors (``n_jobs`` is ignored).

Choices where disentanglement_lib is undefined or differs:

- It adds 1e-11 to every entry before the entropies (to avoid log 0); we use 0 log 0 = 0 exactly,
  and a row (column) of zeros counts as uniform (entropy 1), as that epsilon makes it. Scores
  differ from its by ~1e-10.
- With one factor (K = 1) the base-K entropy is undefined; a code's disentanglement is then 1.
  Likewise completeness with one code dimension.
- The classifiers are seeded (``random_state`` drawn from the metric's generator after the points;
  for "batched" it keys the tie-break draws), so a seed gives the same result every time;
  disentanglement_lib leaves them unseeded.
- A factor that takes one value among the training points has no classifier: ValueError (raise
  num_train), rather than scikit-learn's message.

Images encoded: num_train + num_test.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np
import torch

from fastfvae.metrics import _boosting, _common
from fastfvae.metrics._sklearn import fit_counting_warnings, single_thread, sklearn

ESTIMATORS = ("batched", "exact", "hist")
CLASSIFIERS = {
    "batched": "GradientBoostingClassifier() defaults, fastfvae's batched implementation",
    "exact": "GradientBoostingClassifier() defaults",
    "hist": "HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, max_depth=3, min_samples_leaf=1, "
            "early_stopping=False), split-gain importances",
}


def normalised_entropy(matrix: np.ndarray) -> np.ndarray:
    """Entropy of every row of ``matrix`` (R, C) >= 0 normalised to sum 1, in base C: float64 (R,).

    A row of zeros counts as uniform (entropy 1); with C = 1 every entropy is 0.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    rows, cols = matrix.shape
    if cols == 1:
        return np.zeros(rows)
    totals = matrix.sum(axis=1, keepdims=True)
    p = np.where(totals > 0, matrix / np.where(totals > 0, totals, 1.0), 1.0 / cols)
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -plogp.sum(axis=1) / math.log(cols)


def _weighted_score(importance: np.ndarray) -> tuple[float, np.ndarray]:
    """(sum_r rho_r (1 - H(row r)), the per-row scores 1 - H) for importance (R, C) >= 0."""
    per_row = 1.0 - normalised_entropy(importance)
    total = importance.sum()
    rho = importance.sum(axis=1) / total if total > 0 else np.full(importance.shape[0], 1.0 / importance.shape[0])
    return float((rho * per_row).sum()), per_row


def disentanglement(importance) -> float:
    """DCI disentanglement of an importance matrix (D codes, K factors)."""
    return _weighted_score(np.asarray(importance, dtype=np.float64))[0]


def completeness(importance) -> float:
    """DCI completeness of an importance matrix (D codes, K factors)."""
    return _weighted_score(np.asarray(importance, dtype=np.float64).T)[0]


def _make_estimator(estimator: str, random_state: int):
    ensemble = sklearn().ensemble
    if estimator == "exact":
        return ensemble.GradientBoostingClassifier(random_state=random_state)
    return ensemble.HistGradientBoostingClassifier(
        learning_rate=0.1, max_iter=100, max_depth=3, max_leaf_nodes=None, min_samples_leaf=1,
        l2_regularization=0.0, early_stopping=False, random_state=random_state,
    )


def hist_importances(model, num_features: int) -> np.ndarray:
    """Total split gain per feature over all trees of a fitted HistGradientBoostingClassifier,
    normalised to sum 1 (zeros when no tree splits): float64 (num_features,)."""
    predictors = getattr(model, "_predictors", None)
    if predictors is None:  # pragma: no cover - scikit-learn internals moved
        raise RuntimeError("DCI estimator='hist': this scikit-learn's HistGradientBoostingClassifier exposes "
                           "no fitted trees (_predictors); use estimator='exact'")
    gain = np.zeros(num_features)
    for iteration in predictors:
        for tree in iteration:
            nodes = tree.nodes
            split = nodes["is_leaf"] == 0
            np.add.at(gain, nodes["feature_idx"][split], nodes["gain"][split])
    total = gain.sum()
    return gain / total if total > 0 else gain


def fit_factor(estimator: str, x_train, y_train, x_test, y_test, random_state: int) -> tuple:
    """One factor's classifier: (importance (D,), train accuracy, test accuracy)."""
    model = _make_estimator(estimator, random_state)
    fit_counting_warnings(model, x_train, y_train)   # one thread per fit; factors run in parallel threads
    if estimator == "exact":
        importance = np.abs(model.feature_importances_)
    else:
        importance = hist_importances(model, x_train.shape[1])
    with single_thread():
        train_acc = float(np.mean(model.predict(x_train) == y_train))
        test_acc = float(np.mean(model.predict(x_test) == y_test))
    return importance, train_acc, test_acc


def default_jobs(num_factors: int) -> int:
    """Threads for the per-factor fits (each fit single-threaded): one per factor, up to the cores."""
    return min(num_factors, os.cpu_count() or 1)


def fit_batched(codes_train, factors_train, codes_test, factors_test, seed: int) -> list[tuple]:
    """Every factor's classifier with fastfvae's batched GradientBoostingClassifier (_boosting.py),
    on the codes' device: a (importance (D,), train accuracy, test accuracy) per factor."""
    codes_train, codes_test = torch.as_tensor(codes_train), torch.as_tensor(codes_test)
    device = codes_train.device
    factors_train = torch.as_tensor(factors_train).to(device)
    factors_test = torch.as_tensor(factors_test).to(device)
    fits = _boosting.fit_factors(codes_train, factors_train, codes_test.to(device), seed=seed)
    return [(fit.importance.cpu().numpy(),
             float((fit.train_pred == factors_train[:, k]).double().mean()),
             float((fit.test_pred == factors_test[:, k]).double().mean())) for k, fit in enumerate(fits)]


def dci_from_codes(codes_train, factors_train, codes_test, factors_test, *, estimator: str = "batched",
                   n_jobs: int | None = None, random_state: int = 0) -> dict:
    """DCI of codes (N, D) against their factors (N, K) (tensors or arrays), train and test sets."""
    from joblib import Parallel, delayed

    num_factors = torch.as_tensor(factors_train).shape[1]
    num_dims = torch.as_tensor(codes_train).shape[1]
    if estimator == "batched":
        jobs = 1  # one call for every factor: its tree grower uses the CPU library's threads
        fits = fit_batched(codes_train, factors_train, codes_test, factors_test, random_state)
    else:
        x_train, x_test = (_common.to_numpy(torch.as_tensor(c)) for c in (codes_train, codes_test))
        y_train, y_test = (_common.to_numpy(torch.as_tensor(f)) for f in (factors_train, factors_test))
        jobs = default_jobs(num_factors) if n_jobs is None else n_jobs
        fits = Parallel(n_jobs=jobs, prefer="threads")(
            delayed(fit_factor)(estimator, x_train, y_train[:, k], x_test, y_test[:, k], random_state)
            for k in range(num_factors)
        )
    importance = np.stack([fit[0] for fit in fits], axis=1)   # (D, K)
    score_d, per_code = _weighted_score(importance)
    score_c, per_factor = _weighted_score(importance.T)
    train_acc = [fit[1] for fit in fits]
    test_acc = [fit[2] for fit in fits]
    return {
        "dci_disentanglement": score_d,
        "dci_completeness": score_c,
        "dci_informativeness_train": float(np.mean(train_acc)),
        "dci_informativeness_test": float(np.mean(test_acc)),
        "importance_matrix": importance.tolist(),
        "disentanglement_per_code": per_code.tolist(),
        "completeness_per_factor": per_factor.tolist(),
        "informativeness_train_per_factor": train_acc,
        "informativeness_test_per_factor": test_acc,
        "num_dims": int(num_dims),
        "n_jobs": jobs,
    }


def dci(
    encode,
    dataset,
    *,
    num_train: int = 10000,
    num_test: int = 5000,
    estimator: str = "batched",
    n_jobs: int | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    encode_batch_size: int = _common.DEFAULT_ENCODE_BATCH_SIZE,
    data_device=None,
) -> dict:
    """DCI (module docstring: protocol, estimators and defaults of disentanglement_lib).

    encode: callable, observations (n, ...) -> floating (n, D) tensor. dataset: ground-truth data set.
    estimator: "batched" (default), "exact" (scikit-learn's GradientBoostingClassifier,
    disentanglement_lib's) or "hist" (module docstring).
    n_jobs: threads for the K per-factor fits of "exact" and "hist" (default: module docstring).
    seed / generator, encode_batch_size, data_device: as in factor_vae_metric.

    Returns a dict: dci_disentanglement, dci_completeness, dci_informativeness_train,
    dci_informativeness_test, importance_matrix (D lists of K), per-code / per-factor scores,
    the protocol parameters, seed, num_images_encoded and seconds.
    """
    start_time = time.perf_counter()
    sizes = _common.check_dataset(dataset)
    dataset = _common.images_on(dataset, data_device)
    num_train = _common.check_positive_int("num_train", num_train)
    num_test = _common.check_positive_int("num_test", num_test)
    _common.check_enough_points("num_train", num_train, sizes)
    _common.check_choice("estimator", estimator, ESTIMATORS)
    if n_jobs is not None:
        n_jobs = _common.check_positive_int("n_jobs", n_jobs)
    encode_batch_size = _common.check_positive_int("encode_batch_size", encode_batch_size)
    gen, used_seed = _common.make_generator(seed, generator)

    codes_train, factors_train = _common.sample_codes(encode, dataset, sizes, num_train, gen, encode_batch_size)
    codes_test, factors_test = _common.sample_codes(encode, dataset, sizes, num_test, gen, encode_batch_size,
                                                    codes_train.shape[1])
    _common.check_factors_vary("dci", factors_train)
    result = dci_from_codes(codes_train, factors_train, codes_test, factors_test, estimator=estimator,
                            n_jobs=n_jobs, random_state=_common.random_state(gen))
    result.update(
        num_train=num_train, num_test=num_test, estimator=estimator,
        classifier=CLASSIFIERS[estimator],
        seed=used_seed, num_images_encoded=num_train + num_test, seconds=time.perf_counter() - start_time,
    )
    return result
