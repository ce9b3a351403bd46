"""SAP, the Separated Attribute Predictability score (Kumar et al. 2018, section 3), the protocol of
disentanglement_lib ``evaluation/metrics/sap_score.py`` (gin defaults num_train 10000,
num_test 5000, continuous_factors False).

Protocol:

1. Encode ``num_train`` random points, then ``num_test`` more: codes (N, D), factors (N, K).
2. Score matrix S (D, K):
   - discrete factors (default): S[d, k] = test accuracy of scikit-learn's
     ``LinearSVC(C=0.01, class_weight="balanced")`` fitted on code d alone (one feature) to
     predict factor k on the training points;
   - ``continuous_factors=True``: S[d, k] = cov(code d, factor k)^2 / (var(code d) var(factor k))
     on the training points (ddof 1), 0 where var(code d) <= 1e-12; the test points are drawn
     (the draws stay those of the discrete variant) but not used.
3. SAP = mean over factors of (largest S[:, k] - second largest S[:, k]).

Choices where disentanglement_lib is undefined: with a single code dimension the second largest
score is taken as 0 (it would index out of range); a factor with one value among the training
points raises ValueError (a classifier, or a correlation, needs two). LinearSVC runs with the
installed scikit-learn's defaults otherwise (its ``dual="auto"`` picks the primal problem here;
the optimum is unique, so that only changes where the solver stops); fits that stop before
convergence are counted in ``convergence_warnings``. The D*K fits run in ``n_jobs`` threads.

Images encoded: num_train + num_test.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from fastfvae.metrics import _common
from fastfvae.metrics._sklearn import fit_counting_warnings, single_thread, sklearn


def continuous_score_matrix(codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """S[d, k] = squared correlation of codes[:, d] (N, D) and factors[:, k] (N, K), 0 where the
    code's variance <= 1e-12: float64 (D, K)."""
    x = codes - codes.mean(axis=0)
    y = factors - factors.mean(axis=0)
    n = codes.shape[0]
    cov = x.T @ y / (n - 1)                       # (D, K)
    var_x = (x * x).sum(axis=0) / (n - 1)         # (D,)
    var_y = (y * y).sum(axis=0) / (n - 1)         # (K,)
    score = cov**2 / (np.where(var_x > 1e-12, var_x, 1.0)[:, None] * var_y[None, :])
    return np.where(var_x[:, None] > 1e-12, score, 0.0)


def _svc_accuracies(x_train, y_train, x_test, y_test, d: int) -> tuple[list[float], int]:
    """Test accuracy of a LinearSVC on code d for every factor, and its ConvergenceWarning count."""
    svm = sklearn().svm
    scores, warned = [], 0
    for k in range(y_train.shape[1]):
        classifier = svm.LinearSVC(C=0.01, class_weight="balanced")
        warned += fit_counting_warnings(classifier, x_train[:, d:d + 1], y_train[:, k])
        with single_thread():
            scores.append(float(np.mean(classifier.predict(x_test[:, d:d + 1]) == y_test[:, k])))
    return scores, warned


def discrete_score_matrix(x_train, y_train, x_test, y_test, n_jobs: int) -> tuple[np.ndarray, int]:
    """S[d, k] = LinearSVC test accuracy (module docstring), and the number of fits that warned."""
    from joblib import Parallel, delayed

    rows = Parallel(n_jobs=n_jobs, prefer="threads")(
        delayed(_svc_accuracies)(x_train, y_train, x_test, y_test, d) for d in range(x_train.shape[1])
    )
    return np.array([row[0] for row in rows], dtype=np.float64), sum(row[1] for row in rows)


def top_two_gap(matrix: np.ndarray) -> np.ndarray:
    """Per column of matrix (D, K): largest - second largest entry (the largest itself when D = 1)."""
    ordered = np.sort(matrix, axis=0)
    second = ordered[-2] if matrix.shape[0] > 1 else np.zeros(matrix.shape[1])
    return ordered[-1] - second


def sap_from_codes(codes_train, factors_train, codes_test, factors_test, *, continuous_factors: bool = False,
                   n_jobs: int | None = None) -> dict:
    """SAP of codes (N, D) against their factors (N, K) (tensors or arrays), train and test sets."""
    x_train, y_train = _common.to_numpy(torch.as_tensor(codes_train)), _common.to_numpy(torch.as_tensor(factors_train))
    x_test, y_test = _common.to_numpy(torch.as_tensor(codes_test)), _common.to_numpy(torch.as_tensor(factors_test))
    warned = 0
    if continuous_factors:
        matrix = continuous_score_matrix(x_train, y_train.astype(np.float64))
    else:
        jobs = min(x_train.shape[1], os.cpu_count() or 1) if n_jobs is None else n_jobs
        matrix, warned = discrete_score_matrix(x_train, y_train, x_test, y_test, jobs)
    gaps = top_two_gap(matrix)
    return {
        "sap_score": float(gaps.mean()),
        "score_matrix": matrix.tolist(),
        "gap_per_factor": gaps.tolist(),
        "num_dims": int(x_train.shape[1]),
        "convergence_warnings": warned,
    }


def sap(
    encode,
    dataset,
    *,
    num_train: int = 10000,
    num_test: int = 5000,
    continuous_factors: bool = False,
    n_jobs: int | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    encode_batch_size: int = _common.DEFAULT_ENCODE_BATCH_SIZE,
    data_device=None,
) -> dict:
    """SAP (module docstring: protocol and defaults of disentanglement_lib).

    encode: callable, observations (n, ...) -> floating (n, D) tensor. dataset: ground-truth data set.
    continuous_factors: score with squared correlations instead of LinearSVC accuracies.
    n_jobs: threads for the D*K classifier fits (default: min(D, CPU count)).
    seed / generator, encode_batch_size, data_device: as in factor_vae_metric.

    Returns a dict: sap_score, score_matrix (D lists of K), gap_per_factor, convergence_warnings,
    the protocol parameters, seed, num_images_encoded and seconds.
    """
    start_time = time.perf_counter()
    sizes = _common.check_dataset(dataset)
    dataset = _common.images_on(dataset, data_device)
    num_train = _common.check_positive_int("num_train", num_train)
    num_test = _common.check_positive_int("num_test", num_test)
    if not isinstance(continuous_factors, bool):
        raise TypeError(f"continuous_factors: expected a bool, got {type(continuous_factors).__name__} {continuous_factors!r}")
    if not continuous_factors:
        _common.check_enough_points("num_train", num_train, sizes)
    else:
        num_train = _common.check_positive_int("num_train", num_train, minimum=2)
    if n_jobs is not None:
        n_jobs = _common.check_positive_int("n_jobs", n_jobs)
    encode_batch_size = _common.check_positive_int("encode_batch_size", encode_batch_size)
    gen, used_seed = _common.make_generator(seed, generator)

    codes_train, factors_train = _common.sample_codes(encode, dataset, sizes, num_train, gen, encode_batch_size)
    codes_test, factors_test = _common.sample_codes(encode, dataset, sizes, num_test, gen, encode_batch_size,
                                                    codes_train.shape[1])
    _common.check_factors_vary("sap", factors_train)
    result = sap_from_codes(codes_train, factors_train, codes_test, factors_test,
                            continuous_factors=continuous_factors, n_jobs=n_jobs)
    result.update(
        num_train=num_train, num_test=num_test, continuous_factors=continuous_factors,
        classifier=None if continuous_factors else 'LinearSVC(C=0.01, class_weight="balanced") per (code, factor)',
        seed=used_seed, num_images_encoded=num_train + num_test, seconds=time.perf_counter() - start_time,
    )
    return result
