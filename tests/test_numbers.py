"""NumPy scalars and 0-d tensors wherever a Python int or float is accepted, one rule for all
(fastfvae/_checks.py: integer_value, real_value, check_real): the metrics' sizes, counts and
seeds, the loss modules' weights, the ops' scalar arguments; bools and non-finite values are
refused alike everywhere."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fastfvae
from _toy_data import AlignedEncoder, FactorsDataset
from fastfvae import losses
from fastfvae.metrics import factor_vae_metric, mig

SIZES = (3, 4, 5)


def _timeless(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.endswith("seconds")}


def test_metrics_take_numpy_integers_for_sizes_counts_and_seeds():
    """factor_sizes as an npz gives them (np.int64), num_train, num_bins and seed as NumPy
    integers: the same scores as Python ints, and a JSON-writable result."""
    def encoder():  # its noise has its own generator: a fresh one per call gives the same codes
        return AlignedEncoder(len(SIZES), noise_std=0.3)

    plain = mig(encoder(), FactorsDataset(SIZES), num_train=300, num_bins=10, seed=4)
    numpy_data = FactorsDataset(SIZES)
    numpy_data.factor_sizes = tuple(np.array(SIZES, dtype=np.int64))
    got = mig(encoder(), numpy_data, num_train=np.int64(300), num_bins=np.int32(10), seed=np.int64(4))
    assert _timeless(got) == _timeless(plain)
    json.dumps(got)  # every reported parameter is a Python number
    got = factor_vae_metric(encoder(), numpy_data, batch_size=np.int64(16), num_train=np.int64(20),
                            num_eval=np.int64(10), num_variance_estimate=np.int64(100),
                            prune_threshold=np.float32(0.05), seed=np.int64(1))
    json.dumps(got)


@pytest.mark.parametrize("bad, error", [(True, TypeError), (2.0, TypeError), (np.float64(2.0), TypeError),
                                        (np.bool_(True), TypeError), (torch.tensor(3), TypeError)])
def test_metrics_refuse_bools_and_floats_as_counts_and_seeds(bad, error):
    with pytest.raises(error, match="num_train: expected an int"):
        mig(AlignedEncoder(len(SIZES)), FactorsDataset(SIZES), num_train=bad)
    with pytest.raises(error, match="seed: expected an int"):
        mig(AlignedEncoder(len(SIZES)), FactorsDataset(SIZES), num_train=10, seed=bad)
    data = FactorsDataset(SIZES)
    data.factor_sizes = (3, bad, 5)
    with pytest.raises(TypeError, match="dataset.factor_sizes: expected a tuple of ints"):
        mig(AlignedEncoder(len(SIZES)), data, num_train=10)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), np.float32("nan"), torch.tensor(float("inf"))])
def test_metrics_refuse_non_finite_thresholds(bad):
    with pytest.raises(ValueError, match=r"prune_threshold: expected a float >= 0 \(finite\)"):
        factor_vae_metric(AlignedEncoder(len(SIZES)), FactorsDataset(SIZES), prune_threshold=bad)


# Every weight of every loss module, with a valid value.
WEIGHTS = [
    (losses.FactorVAELoss, "gamma", 35.0),
    (losses.BetaVAELoss, "beta", 4.0),
    (lambda **kw: losses.BetaTCVAELoss(dataset_size=100, **kw), "alpha", 1.0),
    (lambda **kw: losses.BetaTCVAELoss(dataset_size=100, **kw), "beta", 6.0),
    (lambda **kw: losses.BetaTCVAELoss(dataset_size=100, **kw), "gamma", 1.0),
    (losses.DIPVAELoss, "lambda_od", 10.0),
    (losses.DIPVAELoss, "lambda_d", 7.0),
    (losses.AnnealedVAELoss, "gamma", 1000.0),
    (losses.AnnealedVAELoss, "c_max", 25.0),
]


@pytest.mark.parametrize("build, name, value", WEIGHTS)
def test_loss_weights_take_numpy_reals_and_0d_tensors(build, name, value):
    for given in (np.float32(value), np.float64(value), np.int64(int(value)), torch.tensor(value)):
        module = build(**{name: given})
        assert type(getattr(module, name)) is float and getattr(module, name) == float(given)


@pytest.mark.parametrize("build, name, value", WEIGHTS)
def test_loss_weights_refuse_bools_strings_and_non_finite_values(build, name, value):
    for bad in (True, np.bool_(False), "3", torch.ones(2)):
        with pytest.raises(TypeError, match=f"{name}: expected a real number"):
            build(**{name: bad})
    for bad in (float("nan"), float("inf"), -float("inf"), np.float32("nan")):
        with pytest.raises(ValueError, match=f"{name}: expected a finite number"):
            build(**{name: bad})


def test_integer_arguments_of_losses_and_ops_take_numpy_integers():
    """Counts are host values: NumPy integers, never tensors (reading one would synchronise)."""
    z = torch.randn(4, 3)
    want = fastfvae.log_qz(z, z, z, dataset_size=10)
    for size in (np.int64(10), np.int32(10), np.uint8(10)):
        got = fastfvae.log_qz(z, z, z, dataset_size=size)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    for bad in (True, np.bool_(True), 10.0, np.float64(10), torch.tensor(10)):
        with pytest.raises(ValueError, match="dataset_size: expected an int >= 1"):
            fastfvae.log_qz(z, z, z, dataset_size=bad)
    module = losses.AnnealedVAELoss(iteration_threshold=np.int64(50))
    assert type(module.iteration_threshold) is int and module.iteration_threshold == 50
    assert type(losses.BetaTCVAELoss(dataset_size=np.int16(50)).dataset_size) is int
