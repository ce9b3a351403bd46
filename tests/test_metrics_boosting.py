"""DCI's estimator="batched" (fastfvae/metrics/_boosting.py, kernels/cpu/boosting_trees.cpp)
against scikit-learn's GradientBoostingClassifier, the algorithm it re-implements.

Every stage makes scikit-learn's partitions and leaf values, so the raw predictions agree to
rounding; where two features split a node the same way (a tie: duplicated codes, or a small node)
both pick one at random, which moves that split's importance between them. Both growers (the CPU library's and the torch one) are checked.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastfvae.backends import native
from fastfvae.metrics import _boosting
from fastfvae.metrics.dci import dci_from_codes

GROWERS = ["native", "torch"]


def _need(grower):
    if grower == "native" and native.boosting_trees_available() is not None:
        pytest.skip(native.boosting_trees_available())


def _continuous_problem(seed, n=1500, m=500, features=5):
    """Continuous codes (no ties) and three factors: binary, 3 and 5 classes."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + m, features)).astype(np.float32)
    labels = np.stack([
        (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64),
        np.digitize(x[:, 2] + 0.5 * rng.normal(size=n + m), [-0.5, 0.5]),
        np.digitize(x[:, 3] * x[:, 4] + 0.3 * rng.normal(size=n + m), [-1.0, -0.2, 0.2, 1.0]),
    ], axis=1) * 3 + 7   # label values need not be 0..C-1
    return x[:n], labels[:n], x[n:], labels[n:]


def _sklearn(x, y, stages, max_depth=3):
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(n_estimators=stages, max_depth=max_depth, random_state=0).fit(x, y)


@pytest.mark.parametrize("grower", GROWERS)
@pytest.mark.parametrize("seed", [0, 1])
def test_stages_are_sklearns_on_continuous_codes(grower, seed):
    # Same partitions and Newton leaf values at every stage: the raw predictions agree to rounding.
    # (A tie between two features that split a small node the same way gives the same partition,
    # so this holds even where the importance of that split goes to the other feature.)
    _need(grower)
    stages = 8
    x, y, x_test, _ = _continuous_problem(seed)
    fits = _boosting.fit_factors(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(x_test),
                                 n_estimators=stages, seed=seed, grower=grower)
    for k, fit in enumerate(fits):
        model = _sklearn(x, y[:, k], stages)
        raw = model.decision_function(x)
        np.testing.assert_allclose(fit.train_raw.numpy().reshape(raw.shape), raw, rtol=0, atol=1e-9)
        assert np.array_equal(fit.train_pred.numpy(), model.predict(x))
        # The test samples may fall on the other side of a tied split's threshold: nearly all agree.
        assert np.mean(fit.test_pred.numpy() == model.predict(x_test)) > 0.99


@pytest.mark.parametrize("grower", GROWERS)
def test_importances_are_sklearns_where_nodes_cannot_tie(grower):
    # Depth-1 trees split only the root (1500 samples): no two features split it the same way, so
    # the importances (sum of squared-error decreases, normalised) must agree to rounding.
    _need(grower)
    x, y, x_test, _ = _continuous_problem(2)
    fits = _boosting.fit_factors(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(x_test),
                                 n_estimators=10, max_depth=1, grower=grower)
    for k, fit in enumerate(fits):
        model = _sklearn(x, y[:, k], 10, max_depth=1)
        np.testing.assert_allclose(fit.importance.numpy(), model.feature_importances_, rtol=0, atol=1e-12)
        assert np.array_equal(fit.test_pred.numpy(), model.predict(x_test))


def test_native_and_torch_growers_agree_with_ties():
    _need("native")
    # Discrete, duplicated codes: every split ties with its copy; both growers draw the same winners.
    rng = np.random.default_rng(3)
    factors = rng.integers(0, 4, size=(600, 3))
    codes = torch.from_numpy(np.concatenate([factors, factors, factors[:, :1]], axis=1).astype(np.float32))
    labels = torch.from_numpy(factors)
    out = [_boosting.fit_factors(codes, labels, codes[:100], n_estimators=5, seed=11, grower=g) for g in GROWERS]
    for a, b in zip(*out):
        np.testing.assert_allclose(a.importance.numpy(), b.importance.numpy(), rtol=0, atol=1e-12)
        assert torch.equal(a.train_pred, b.train_pred) and torch.equal(a.test_pred, b.test_pred)
    # The tie-break is random, not "lowest feature first": a factor's copies both get importance.
    for fit in out[0]:
        assert (fit.importance > 0.05).sum() >= 2, fit.importance


@pytest.mark.parametrize("grower", GROWERS)
def test_duplicated_codes_share_importance_as_sklearns(grower):
    _need(grower)
    rng = np.random.default_rng(4)
    factors = rng.integers(0, 5, size=(700, 2))
    codes = np.concatenate([factors, factors], axis=1).astype(np.float32)
    fits = _boosting.fit_factors(torch.from_numpy(codes), torch.from_numpy(factors), torch.from_numpy(codes[:50]),
                                 n_estimators=20, seed=0, grower=grower)
    for k, fit in enumerate(fits):
        share = fit.importance[k].item() / (fit.importance[k] + fit.importance[k + 2]).item()
        reference = _sklearn(codes, factors[:, k], 20).feature_importances_
        assert 0.25 < share < 0.75, (share, reference)


def test_dci_batched_matches_exact_scores():
    x, y, x_test, y_test = _continuous_problem(5, n=1200, m=600)
    exact = dci_from_codes(x, y, x_test, y_test, estimator="exact")
    batched = dci_from_codes(x, y, x_test, y_test, estimator="batched")
    for key in ("dci_disentanglement", "dci_completeness", "dci_informativeness_train", "dci_informativeness_test"):
        assert batched[key] == pytest.approx(exact[key], abs=2e-3), key


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(10, 200), features=st.integers(1, 4),
       classes=st.integers(2, 5), levels=st.integers(1, 6), stages=st.integers(1, 3), depth=st.integers(1, 4))
def test_property_growers_make_the_same_trees(seed, n, features, classes, levels, stages, depth):
    # Any codes, ties included (few distinct values): the CPU library's grower and the torch one
    # (the GPU's) choose the same splits, so DCI is the same number on either device.
    _need("native")
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(0, levels, size=(n, features)).astype(np.float32) * 0.25)
    y = rng.integers(0, classes, size=(n, 1))
    y[:classes, 0] = np.arange(classes)   # every class present
    y = torch.from_numpy(y)
    fits = [_boosting.fit_factors(x, y, x[:7], n_estimators=stages, max_depth=depth, seed=seed, grower=g)[0]
            for g in GROWERS]
    assert torch.equal(fits[0].train_raw, fits[1].train_raw)
    assert torch.equal(fits[0].test_pred, fits[1].test_pred)
    assert torch.allclose(fits[0].importance, fits[1].importance, rtol=0, atol=1e-12)


def test_bad_arguments_give_clear_errors():
    x = torch.randn(20, 2)
    with pytest.raises(ValueError, match="grower: expected 'auto', 'native' or 'torch', got 'gpu'"):
        _boosting.fit_factors(x, torch.zeros(20, 1, dtype=torch.long), x, grower="gpu")
    with pytest.raises(ValueError, match="factor 0: one value among the training points"):
        _boosting.fit_factors(x, torch.zeros(20, 1, dtype=torch.long), x, grower="torch")
    if native.boosting_trees_available() is None:
        order = torch.argsort(x.t(), dim=1)
        with pytest.raises(ValueError, match=r"max_depth must be in \[1, 16\], got 0"):
            native.boosting_trees_grow(x.t(), order, torch.zeros(1, 20, dtype=torch.float64),
                                       torch.zeros(1, 20, dtype=torch.long), 40, 0, x.t(), 0, 0)
        with pytest.raises(ValueError, match=r"fixed_bits must be in \[1, 62\], got 63"):
            native.boosting_trees_grow(x.t(), order, torch.zeros(1, 20, dtype=torch.float64),
                                       torch.zeros(1, 20, dtype=torch.long), 63, 3, x.t(), 0, 0)


def test_importances_are_normalised_and_zero_without_splits():
    x = torch.zeros(30, 3)   # no feature varies: no tree splits
    labels = torch.arange(30)[:, None] % 2
    fit = _boosting.fit_factors(x, labels, x[:4], n_estimators=3)[0]
    assert torch.equal(fit.importance, torch.zeros(3, dtype=torch.float64))
    x = torch.randn(30, 3)
    fit = _boosting.fit_factors(x, labels, x[:4], n_estimators=3)[0]
    assert math.isclose(fit.importance.sum().item(), 1.0, abs_tol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_grower_on_cuda_makes_the_cpu_trees():
    # The GPU path of estimator="batched": the same splits as on the CPU (exact fixed-point sums,
    # the same Philox draws); leaf values and importances come from float atomics there, so they
    # agree to rounding rather than bit for bit.
    x, y, x_test, _ = _continuous_problem(6)
    args = (torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(x_test))
    cpu = _boosting.fit_factors(*args, n_estimators=6, seed=3, grower="torch")
    gpu = _boosting.fit_factors(*(t.cuda() for t in args), n_estimators=6, seed=3, grower="torch")
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.train_raw.cpu(), a.train_raw, rtol=0, atol=1e-12)
        torch.testing.assert_close(b.importance.cpu(), a.importance, rtol=0, atol=1e-12)
        assert torch.equal(b.test_pred.cpu(), a.test_pred)
