"""Mutual Information Gap (Chen et al. 2018), disentanglement_lib's discrete estimator.

Protocol (disentanglement_lib ``evaluation/metrics/mig.py`` + ``utils.py``, gin defaults num_train
10000, histogram_discretizer with num_bins 20):

1. Encode ``num_train`` random observations: codes (N, D) and their factors (N, K).
2. Discretise each code dimension as ``np.digitize(c, np.histogram(c, num_bins)[1][:-1])``: equal-width
   bins between the dimension's min and max (a constant dimension gets one bin), labels 1..num_bins.
3. ``I[d, k]``: discrete mutual information (natural log, as sklearn's mutual_info_score, clipped at
   0) between binned dimension d and factor k; ``H[k]``: entropy of factor k in the sample.
4. MIG = mean over factors of (largest I[:, k] - second largest I[:, k]) / H[k].

Choices where the estimator is undefined (disentanglement_lib would divide by zero or fail):
a factor that takes one value in the sample (H = 0) is left out of the mean and listed in
``factors_skipped`` (score NaN if every factor is); with a single code dimension the second
largest MI is taken as 0.

Where public code disagrees: Chen et al.'s own MIG estimates I(z_d; v_k) from the encoder's
Gaussian q(z|x) over the whole data set, with no binning; this (disentanglement_lib's) version
bins the mean representation, so it depends on num_bins and num_train (a factor with more than
num_bins values cannot reach MIG 1).
"""
from __future__ import annotations

import math
import time

import torch

from fastfvae.metrics import _common
from fastfvae.metrics._discrete import entropy, histogram_discretize, mutual_information


def mig_from_codes(codes: torch.Tensor, factors: torch.Tensor, factor_sizes: tuple[int, ...], num_bins: int) -> dict:
    """MIG of codes (N, D) (float) against their factors (N, K) (LongTensor, any device)."""
    bins = histogram_discretize(codes, num_bins)
    factors = factors.to(bins.device)
    num_dims = codes.shape[1]
    gaps, top_dims, skipped = [], [], []
    for k, size in enumerate(factor_sizes):
        h = float(entropy(factors[:, k], size))
        if h <= 0.0:
            skipped.append(k)
            gaps.append(None)
            top_dims.append(None)
            continue
        mi = mutual_information(bins, factors[:, k], num_bins, size)
        ordered = mi.sort(descending=True)
        second = float(ordered.values[1]) if num_dims > 1 else 0.0
        gaps.append((float(ordered.values[0]) - second) / h)
        top_dims.append(int(ordered.indices[0]))
    valid = [g for g in gaps if g is not None]
    score = sum(valid) / len(valid) if valid else math.nan
    return {"score": score, "per_factor": gaps, "top_dims": top_dims, "factors_skipped": skipped, "num_dims": num_dims}


def mig(
    encode,
    dataset,
    *,
    num_train: int = 10000,
    num_bins: int = 20,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    encode_batch_size: int = _common.DEFAULT_ENCODE_BATCH_SIZE,
    data_device=None,
) -> dict:
    """MIG (module docstring: protocol and defaults of disentanglement_lib).

    encode: callable, observations (n, ...) -> floating (n, D) tensor. dataset: ground-truth data set.
    seed / generator: as in factor_vae_metric (one CPU generator; seed 0 by default).

    data_device: None (default: dataset.images gets CPU factors) or a device to move each chunk of
    factors to before dataset.images, e.g. "cuda" to render dSprites on the GPU.
    Returns a dict: score, per_factor (normalised gap per factor), top_dims, factors_skipped,
    num_dims, the protocol parameters, seed, num_images_encoded and seconds.
    """
    start_time = time.perf_counter()
    sizes = _common.check_dataset(dataset)
    dataset = _common.images_on(dataset, data_device)
    num_train = _common.check_positive_int("num_train", num_train)
    num_bins = _common.check_positive_int("num_bins", num_bins, minimum=2)
    encode_batch_size = _common.check_positive_int("encode_batch_size", encode_batch_size)
    gen, used_seed = _common.make_generator(seed, generator)

    factors = _common.sample_factors(dataset, sizes, num_train, gen)
    codes = _common.encode_all(encode, dataset, factors, encode_batch_size)
    result = mig_from_codes(codes, factors, sizes, num_bins)
    result.update(
        num_train=num_train, num_bins=num_bins, discretizer="histogram (np.digitize on np.histogram edges)",
        seed=used_seed, num_images_encoded=num_train, seconds=time.perf_counter() - start_time,
    )
    return result
