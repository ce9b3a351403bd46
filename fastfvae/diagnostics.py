"""The KL decomposition of the paper (DESIGN.md §1), measured on a data set, and a minibatch TC
estimate for training logs.

    E_x[KL(q(z|x) || p(z))] = I(x; z) + KL(q(z) || p(z))                       (1)
    KL(q(z) || p(z))        = TC + sum_j KL(q(z_j) || p(z_j)),  TC = KL(q(z) || prod_j q(z_j))

``decompose_kl`` takes the aggregate posterior q(z) to be the mixture of the Gaussian posteriors
of N encoded inputs, q(z) = (1/N) sum_n q(z | x_n), draws one z from each of M of those inputs
(z_i ~ q(z | x_i), so z_i ~ q(z) exactly) and estimates every term by Monte Carlo over the M
samples, with log q(z) and log q(z_j) from ``fastfvae.log_qz_marginals`` (streaming over the N
components, memory O((M + N) D)). E_x[KL] is the exact average of the closed-form KL over the N
inputs; I and KL(q(z)||p(z)) are estimated from the samples, so the residual of (1) measures
their Monte Carlo error (it should be within a few standard errors of 0).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from fastfvae import ops
from fastfvae._checks import check_float_tensor, check_like, check_positive_int
from fastfvae.reference import compute_dtype
from fastfvae.reference import gaussian_log_density as _gaussian_log_density


def _mean_and_se(values: Tensor) -> tuple[float, float]:
    """Mean over the first dimension and its standard error (sample std / sqrt(n))."""
    n = values.shape[0]
    mean = values.mean(dim=0)
    se = values.std(dim=0, unbiased=True) / math.sqrt(n) if n > 1 else torch.full_like(mean, float("nan"))
    return mean, se


def encode_mixture(encode_gaussian: Callable, dataset, num_mixture: int, batch_size: int,
                   generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(mu, logvar), each (num_mixture, D), of num_mixture inputs drawn from ``dataset``.

    Each batch's output is checked as the metrics check theirs: a NaN or Inf raises ValueError
    (a NaN encoder would otherwise turn every estimate into NaN without a word).
    """
    mus, logvars = [], []
    with torch.no_grad():
        for start in range(0, num_mixture, batch_size):
            count = min(batch_size, num_mixture - start)
            factors = dataset.sample_factors(count, generator)
            output = encode_gaussian(dataset.images(factors))
            if not isinstance(output, (tuple, list)) or len(output) != 2:
                raise TypeError(f"encode_gaussian: expected a pair (mu, logvar) of ({count}, D) tensors, "
                                f"got {type(output).__name__}")
            mu, logvar = (t.detach() if isinstance(t, Tensor) else t for t in output)
            check_float_tensor("mu (from encode_gaussian)", mu, (2,))
            check_like("logvar (from encode_gaussian)", logvar, "mu", mu)
            _check_finite("encode_gaussian", mu, logvar)
            mus.append(mu)
            logvars.append(logvar)
    mu, logvar = torch.cat(mus), torch.cat(logvars)
    if mu.shape[0] != num_mixture:
        raise ValueError(f"encode_gaussian: expected {num_mixture} rows in all, got {mu.shape[0]}")
    return mu, logvar


def _check_finite(name: str, mu: Tensor, logvar: Tensor) -> None:
    """ValueError (worded as fastfvae.metrics words it) when mu or logvar holds a NaN or Inf."""
    bad = int((~torch.isfinite(mu)).sum()) + int((~torch.isfinite(logvar)).sum())
    if bad:
        raise ValueError(f"{name}: returned {bad} non-finite values (NaN or Inf) in (mu, logvar) of shape {tuple(mu.shape)}")


def _table_encoder(code_table, dataset):
    """(encode_gaussian, dataset) that read (mu, logvar) from ``code_table`` (a CodeTable with
    log-variances) for the factors ``dataset`` draws."""
    from fastfvae.metrics.code_table import CodeTable

    if not isinstance(code_table, CodeTable):
        raise TypeError(f"code_table: expected None or a fastfvae.metrics.CodeTable, got {type(code_table).__name__}")
    if code_table.logvars is None:
        raise ValueError("code_table: holds no log-variances; build it with an encode that returns (mu, logvar)")
    return code_table.encode_gaussian, code_table.source(dataset)


def decompose_kl(
    encode_gaussian: Callable,
    dataset,
    *,
    num_mixture: int = 10000,
    num_samples: int = 2000,
    batch_size: int = 256,
    seed: int = 0,
    backend: str = "auto",
    code_table=None,
) -> dict:
    """Monte Carlo estimates of the terms of the paper's KL decomposition on ``dataset``.

    encode_gaussian: images (what ``dataset.images(factors)`` returns) -> (mu, logvar), each
        (n, D) — the encoder's Gaussian posterior q(z | x); it converts the images itself.
    dataset: ``factor_sizes``, ``sample_factors(n, generator)``, ``images(factors)``.
    num_mixture: N inputs whose posteriors form q(z); num_samples: M <= N of them get a z.
    batch_size: inputs per encode_gaussian call; seed: the data and noise generator's seed.
    code_table: None, or a fastfvae.metrics.CodeTable built with log-variances
        (``encode_code_table(encode_gaussian, dataset)``): the N inputs are drawn exactly as
        without it and their (mu, logvar) read from the table (encode_gaussian is then not called
        and may be None). With a table built once for the metrics this costs no encoder pass.

    Returns a dict of floats (and per-dimension lists), each estimate with its standard error
    ``<name>_se`` over the M samples:
        expected_kl          E_x[KL(q(z|x) || p(z))] (exact over the N inputs; se over inputs)
        mutual_info          I(x; z) = E[log q(z|x) - log q(z)]
        kl_qz_pz             KL(q(z) || p(z)) = E[log q(z) - log p(z)]
        total_correlation    TC = E[log q(z) - sum_j log q(z_j)]
        dimwise_kl           sum_j KL(q(z_j) || p(z_j))
        identity_residual    expected_kl - mutual_info - kl_qz_pz (should be ~0: a check)
        expected_kl_per_dim, mutual_info_per_dim (I(x; z_j)), dimwise_kl_per_dim: lists of D
            (with their ``_se`` lists)
        num_mixture, num_samples, latent_dim
    (kl_qz_pz = total_correlation + dimwise_kl holds exactly for these estimators.)
    """
    num_mixture = check_positive_int("num_mixture", num_mixture)
    num_samples = check_positive_int("num_samples", num_samples)
    batch_size = check_positive_int("batch_size", batch_size)
    if num_samples > num_mixture:
        raise ValueError(f"num_samples: expected at most num_mixture = {num_mixture}, got {num_samples}")
    generator = torch.Generator().manual_seed(seed)
    if code_table is not None:
        encode_gaussian, dataset = _table_encoder(code_table, dataset)
    elif not callable(encode_gaussian):
        raise TypeError(f"encode_gaussian: expected a callable (or a code_table), got {type(encode_gaussian).__name__}")
    mu, logvar = encode_mixture(encode_gaussian, dataset, num_mixture, batch_size, generator)
    kernel_dtype = compute_dtype(mu.dtype)
    mu, logvar = mu.to(kernel_dtype), logvar.to(kernel_dtype)

    # z_i ~ q(z | x_i) for the first M inputs (the N inputs are i.i.d., so any M are a uniform pick).
    eps = torch.randn(num_samples, mu.shape[1], generator=generator, dtype=torch.float64).to(mu.device)
    mu_s, logvar_s = mu[:num_samples].double(), logvar[:num_samples].double()
    z = mu_s + torch.exp(0.5 * logvar_s) * eps
    with torch.no_grad():
        # The mixture (1/N) sum_n q(z|x_n) is the "mws" form with dataset_size = 1: w = -log(1 * N).
        log_qz, log_qzj = ops.log_qz_marginals(
            z.to(kernel_dtype), mu, logvar, dataset_size=1, method="mws", backend=backend
        )
    log_qz, log_qzj = log_qz.double(), log_qzj.double()
    log_q_given_x = _gaussian_log_density(z, mu_s, logvar_s)  # (M, D)
    log_p = _gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z))  # (M, D)

    mu64, logvar64 = mu.double(), logvar.double()
    kl_per_input = 0.5 * (mu64.pow(2) + logvar64.exp() - logvar64 - 1.0)  # (N, D)
    expected_kl_dims, expected_kl_dims_se = _mean_and_se(kl_per_input)
    expected_kl, expected_kl_se = _mean_and_se(kl_per_input.sum(dim=1))

    terms = {
        "mutual_info": log_q_given_x.sum(dim=1) - log_qz,
        "kl_qz_pz": log_qz - log_p.sum(dim=1),
        "total_correlation": log_qz - log_qzj.sum(dim=1),
        "dimwise_kl": (log_qzj - log_p).sum(dim=1),
    }
    out: dict = {"expected_kl": float(expected_kl), "expected_kl_se": float(expected_kl_se)}
    for name, values in terms.items():
        mean, se = _mean_and_se(values)
        out[name], out[f"{name}_se"] = float(mean), float(se)
    # Residual of (1): its Monte Carlo part is mean_i (log q(z_i|x_i) - log p(z_i)) against the
    # exact mean of the closed-form KL.
    _, mc_kl_se = _mean_and_se(log_q_given_x.sum(dim=1) - log_p.sum(dim=1))
    out["identity_residual"] = out["expected_kl"] - out["mutual_info"] - out["kl_qz_pz"]
    out["identity_residual_se"] = float(mc_kl_se)
    per_dim = {
        "mutual_info_per_dim": _mean_and_se(log_q_given_x - log_qzj),
        "dimwise_kl_per_dim": _mean_and_se(log_qzj - log_p),
        "expected_kl_per_dim": (expected_kl_dims, expected_kl_dims_se),
    }
    for name, (mean, se) in per_dim.items():
        out[name], out[f"{name}_se"] = mean.tolist(), se.tolist()
    out["num_mixture"], out["num_samples"], out["latent_dim"] = num_mixture, num_samples, int(mu.shape[1])
    return out


def minibatch_tc(z: Tensor, mu: Tensor, logvar: Tensor, dataset_size: int, *, backend: str = "auto") -> float:
    """beta-TCVAE's minibatch-weighted-sampling TC estimate on one batch, for training logs:
    mean_i (log q(z_i) - sum_j log q(z_ij)) with z (B, D) drawn from N(mu, exp(logvar)) (B, D)."""
    dtype = torch.float64 if torch.float64 in (z.dtype, mu.dtype, logvar.dtype) else torch.float32
    with torch.no_grad():
        log_qz, log_prod = ops.log_qz(
            z.detach().to(dtype), mu.detach().to(dtype), logvar.detach().to(dtype), dataset_size=dataset_size,
            method="mws", backend=backend,
        )
        return float((log_qz.double() - log_prod.double()).mean())
