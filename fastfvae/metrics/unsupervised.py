"""Unsupervised scores of a representation (disentanglement_lib
``evaluation/metrics/unsupervised_metrics.py``, gin defaults num_train 10000, histogram
discretiser with 20 bins): they use the codes only, not the factors.

On the codes (N, D) of ``num_train`` random points, with Sigma their covariance (ddof 1):

- gaussian_total_correlation = 0.5 (sum_d log Sigma_dd - log det Sigma): KL between N(0, Sigma)
  and N(0, diag Sigma), the total correlation if the codes were Gaussian (+inf when Sigma is
  singular, e.g. a code dimension that copies another).
- gaussian_wasserstein_correlation = 2 tr Sigma - 2 tr sqrtm(diag(Sigma) Sigma): the squared
  W2 distance between the same two Gaussians (disentanglement_lib's row-scaled product; its
  eigenvalues are those of diag(Sigma)^1/2 Sigma diag(Sigma)^1/2, so the trace of its square
  root is computed from that symmetric matrix's eigenvalues). ``_norm``: divided by tr Sigma.
- mutual_info_score = mean of I(binned code i; binned code j) (nats) over the pairs i != j, each
  code cut into ``num_bins`` equal-width bins between its min and max.

Choices where disentanglement_lib is undefined: a code dimension that is constant over the
points has log Sigma_dd = -inf; a constant is independent of everything, so it adds nothing to
either Gaussian score and is left out of both (listed in ``constant_dims``; it stays in the mutual
information mean, with MI 0). Every dimension constant: ValueError (a collapsed encoder has no
scores). One code dimension: mutual_info_score is 0 (no pairs).

Images encoded: num_train.
"""
from __future__ import annotations

import math
import time

import torch

from fastfvae.metrics import _common
from fastfvae.metrics._discrete import histogram_discretize, mutual_information


def gaussian_total_correlation(cov: torch.Tensor) -> float:
    """0.5 (sum log diag(cov) - log det cov) for a covariance (D, D) with a positive diagonal."""
    sign, logdet = torch.linalg.slogdet(cov.to(torch.float64))
    if float(sign) <= 0:
        return math.inf
    return float(0.5 * (torch.diagonal(cov).log().sum() - logdet))


def gaussian_wasserstein_correlation(cov: torch.Tensor) -> float:
    """2 tr cov - 2 tr sqrtm(diag(cov) cov) for a covariance (D, D)."""
    cov = cov.to(torch.float64)
    scale = torch.diagonal(cov).clamp(min=0).sqrt()
    symmetric = scale[:, None] * cov * scale[None, :]           # diag^1/2 cov diag^1/2, same spectrum
    eigenvalues = torch.linalg.eigvalsh(symmetric).clamp(min=0)
    return float(2 * torch.trace(cov) - 2 * eigenvalues.sqrt().sum())


def mutual_info_score(codes: torch.Tensor, num_bins: int) -> float:
    """Mean discrete MI (nats) between binned code dimensions over the pairs i != j of codes (N, D)."""
    num_dims = codes.shape[1]
    if num_dims < 2:
        return 0.0
    bins = histogram_discretize(codes, num_bins)
    total = 0.0
    for j in range(num_dims):
        mi = mutual_information(bins, bins[:, j], num_bins, num_bins + 1)   # labels in 1..num_bins
        total += float(mi.sum() - mi[j])
    return total / (num_dims * num_dims - num_dims)


def unsupervised_from_codes(codes: torch.Tensor, *, num_bins: int = 20) -> dict:
    """The unsupervised scores of codes (N, D), N >= 2 (module docstring)."""
    codes = torch.as_tensor(codes).to(torch.float64)
    cov = torch.cov(codes.T, correction=1).reshape(codes.shape[1], codes.shape[1])
    # Constant means min == max (the covariance of a constant column can be a rounding residue ~1e-33).
    is_constant = codes.min(dim=0).values == codes.max(dim=0).values
    kept = (~is_constant).nonzero().squeeze(1)
    constant = is_constant.nonzero().squeeze(1).tolist()
    if kept.numel() == 0:
        raise ValueError(
            f"encode: every one of the {codes.shape[1]} code dimensions is constant over the {codes.shape[0]} "
            "points (a collapsed encoder); the unsupervised scores are undefined"
        )
    sub = cov[kept][:, kept]
    wasserstein = gaussian_wasserstein_correlation(sub)
    return {
        "gaussian_total_correlation": gaussian_total_correlation(sub),
        "gaussian_wasserstein_correlation": wasserstein,
        "gaussian_wasserstein_correlation_norm": wasserstein / float(torch.trace(sub)),
        "mutual_info_score": mutual_info_score(codes, num_bins),
        "constant_dims": constant,
        "num_dims": int(codes.shape[1]),
    }


def unsupervised_scores(
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
    """The unsupervised scores (module docstring: definitions and defaults of disentanglement_lib).

    encode: callable, observations (n, ...) -> floating (n, D) tensor. dataset: ground-truth data set
    (only its points are used, not their factors). num_bins: histogram bins for the mutual information.
    seed / generator, encode_batch_size, data_device: as in factor_vae_metric.

    Returns a dict: gaussian_total_correlation, gaussian_wasserstein_correlation(_norm),
    mutual_info_score, constant_dims, num_dims, the protocol parameters, seed, num_images_encoded
    and seconds.
    """
    start_time = time.perf_counter()
    sizes = _common.check_dataset(dataset)
    dataset = _common.images_on(dataset, data_device)
    num_train = _common.check_positive_int("num_train", num_train, minimum=2)
    num_bins = _common.check_positive_int("num_bins", num_bins, minimum=2)
    encode_batch_size = _common.check_positive_int("encode_batch_size", encode_batch_size)
    gen, used_seed = _common.make_generator(seed, generator)

    codes, _ = _common.sample_codes(encode, dataset, sizes, num_train, gen, encode_batch_size)
    result = unsupervised_from_codes(codes, num_bins=num_bins)
    result.update(
        num_train=num_train, num_bins=num_bins, seed=used_seed, num_images_encoded=num_train,
        seconds=time.perf_counter() - start_time,
    )
    return result
