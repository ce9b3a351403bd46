"""Modularity and explicitness (Ridgeway & Mozer 2018, section 3), the protocol of
disentanglement_lib ``evaluation/metrics/modularity_explicitness.py`` (gin defaults num_train
10000, num_test 5000, histogram discretiser with 20 bins).

Protocol:

1. Encode ``num_train`` random points, then ``num_test`` more: codes (N, D), factors (N, K).
2. Modularity, on the training points: every code dimension is cut into ``num_bins`` equal-width
   bins between its min and max (as MIG); m[d, k] = I(binned code d; factor k)^2 (MI in nats).
   Per code, delta_d = (sum_k m[d, k] - max_k m[d, k]) / (max_k m[d, k] * (K - 1)) and its
   modularity is 1 - delta_d, or 0 when max_k m[d, k] = 0 (a code that carries nothing).
   modularity_score = mean over codes.
3. Explicitness: codes z-scored with the training points' mean and standard deviation (ddof 0).
   Per factor, a one-vs-rest logistic regression (scikit-learn ``LogisticRegression()`` defaults
   per class: L2, C = 1, lbfgs, 100 iterations) is fitted on the training points; its class
   probabilities are scored against the one-hot labels with the macro ROC-AUC, on the training and
   on the test points. explicitness_score_train / _test = mean over factors.

Choices where disentanglement_lib is undefined or differs:

- A constant code dimension (standard deviation 0) is z-scored to 0, not divided by 0 (which
  gives NaN codes and a scikit-learn error there).
- With one factor (K = 1), delta_d is 0 (there is no other factor to share a code with).
- The ROC-AUC of a class needs positives and negatives: a class absent from the test points (or
  present in all of them) is left out of the macro average (disentanglement_lib fails, or pairs
  the wrong columns, when a class is missing from the test set); ``auc_classes_skipped`` counts them.
- disentanglement_lib's ``LogisticRegression()`` of its day was liblinear one-vs-rest, which also
  penalises the intercept; today's default solver (lbfgs) does not. Fits that stop before
  convergence are counted in ``convergence_warnings``.

Images encoded: num_train + num_test.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from fastfvae.metrics import _common
from fastfvae.metrics._discrete import histogram_discretize, mutual_information_matrix
from fastfvae.metrics._sklearn import fit_counting_warnings, single_thread, sklearn


def modularity(mutual_info) -> tuple[float, np.ndarray]:
    """(modularity score, per-code modularity (D,)) of a mutual information matrix (D, K) >= 0."""
    squared = np.square(np.asarray(mutual_info, dtype=np.float64))
    top = squared.max(axis=1)
    num_factors = squared.shape[1]
    if num_factors == 1:
        delta = np.zeros(squared.shape[0])
    else:
        delta = (squared.sum(axis=1) - top) / np.where(top > 0, top * (num_factors - 1), 1.0)
    per_code = np.where(top > 0, 1.0 - delta, 0.0)
    return float(per_code.mean()), per_code


def standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets z-scored with the training mean and std (ddof 0); a constant column becomes 0."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (train - mean) / std, (test - mean) / std


def macro_auc(labels: np.ndarray, probabilities: np.ndarray, classes: np.ndarray) -> tuple[float, int]:
    """Macro ROC-AUC of probabilities (N, C) (columns: ``classes``) against one-hot labels (N,),
    over the classes that have both positives and negatives; (auc, number of classes skipped)."""
    onehot = labels[:, None] == classes[None, :]            # (N, C)
    positives = onehot.sum(axis=0)
    usable = (positives > 0) & (positives < labels.shape[0])
    if not usable.any():
        return float("nan"), int(classes.shape[0])
    auc = sklearn().metrics.roc_auc_score(onehot[:, usable].astype(np.int64), probabilities[:, usable], average="macro")
    return float(auc), int((~usable).sum())


def explicitness_per_factor(x_train, y_train, x_test, y_test) -> tuple[float, float, int, int]:
    """(train AUC, test AUC, classes skipped in the test AUC, ConvergenceWarnings) for one factor."""
    sk = sklearn()
    from sklearn.multiclass import OneVsRestClassifier

    model = OneVsRestClassifier(sk.linear_model.LogisticRegression())
    warned = fit_counting_warnings(model, x_train, y_train)
    classes = model.classes_
    with single_thread():
        auc_train, _ = macro_auc(y_train, model.predict_proba(x_train), classes)
        auc_test, skipped = macro_auc(y_test, model.predict_proba(x_test), classes)
    return auc_train, auc_test, skipped, warned


def modularity_explicitness_from_codes(codes_train, factors_train, codes_test, factors_test, factor_sizes,
                                       *, num_bins: int = 20) -> dict:
    """Modularity and explicitness of codes (N, D) against their factors (N, K), train and test sets."""
    codes_train, factors_train = torch.as_tensor(codes_train), torch.as_tensor(factors_train)
    bins = histogram_discretize(codes_train, num_bins)
    mutual_info = mutual_information_matrix(bins, num_bins, factors_train, factor_sizes)   # (D, K)
    score, per_code = modularity(_common.to_numpy(mutual_info))

    x_train, x_test = standardise(_common.to_numpy(codes_train), _common.to_numpy(torch.as_tensor(codes_test)))
    y_train, y_test = _common.to_numpy(factors_train), _common.to_numpy(torch.as_tensor(factors_test))
    per_factor = [explicitness_per_factor(x_train, y_train[:, k], x_test, y_test[:, k]) for k in range(y_train.shape[1])]
    return {
        "modularity_score": score,
        "explicitness_score_train": float(np.mean([f[0] for f in per_factor])),
        "explicitness_score_test": float(np.mean([f[1] for f in per_factor])),
        "modularity_per_code": per_code.tolist(),
        "mutual_info_matrix": _common.to_numpy(mutual_info).tolist(),
        "explicitness_train_per_factor": [f[0] for f in per_factor],
        "explicitness_test_per_factor": [f[1] for f in per_factor],
        "auc_classes_skipped": sum(f[2] for f in per_factor),
        "convergence_warnings": sum(f[3] for f in per_factor),
        "num_dims": int(codes_train.shape[1]),
    }


def modularity_explicitness(
    encode,
    dataset,
    *,
    num_train: int = 10000,
    num_test: int = 5000,
    num_bins: int = 20,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    encode_batch_size: int = _common.DEFAULT_ENCODE_BATCH_SIZE,
    data_device=None,
) -> dict:
    """Modularity and explicitness (module docstring: protocol and defaults of disentanglement_lib).

    encode: callable, observations (n, ...) -> floating (n, D) tensor. dataset: ground-truth data set.
    num_bins: histogram bins per code for the mutual information.
    seed / generator, encode_batch_size, data_device: as in factor_vae_metric.

    Returns a dict: modularity_score, explicitness_score_train, explicitness_score_test, per-code
    and per-factor scores, the mutual information matrix (D lists of K), the protocol parameters,
    seed, num_images_encoded and seconds.
    """
    start_time = time.perf_counter()
    sizes = _common.check_dataset(dataset)
    dataset = _common.images_on(dataset, data_device)
    num_train = _common.check_positive_int("num_train", num_train)
    num_test = _common.check_positive_int("num_test", num_test)
    _common.check_enough_points("num_train", num_train, sizes)
    num_bins = _common.check_positive_int("num_bins", num_bins, minimum=2)
    encode_batch_size = _common.check_positive_int("encode_batch_size", encode_batch_size)
    gen, used_seed = _common.make_generator(seed, generator)

    codes_train, factors_train = _common.sample_codes(encode, dataset, sizes, num_train, gen, encode_batch_size)
    codes_test, factors_test = _common.sample_codes(encode, dataset, sizes, num_test, gen, encode_batch_size,
                                                    codes_train.shape[1])
    _common.check_factors_vary("modularity_explicitness", factors_train)
    result = modularity_explicitness_from_codes(codes_train, factors_train, codes_test, factors_test, sizes,
                                                num_bins=num_bins)
    result.update(
        num_train=num_train, num_test=num_test, num_bins=num_bins,
        classifier="one-vs-rest LogisticRegression() per factor on z-scored codes, macro ROC-AUC",
        seed=used_seed, num_images_encoded=num_train + num_test, seconds=time.perf_counter() - start_time,
    )
    return result
