"""dip_regulariser: DIP-VAE's covariance penalty, one pass on the CPU against its torch forms.

What is timed: the DIP-VAE-II penalty as ``DIPVAELoss`` runs it, ``fastfvae.losses.dip_penalty``
(one autograd node; on the CPU its forward is one call of the CPU library,
kernels/cpu/dip_penalty.cpp: mu - mu[0] formed in registers, the Gram matrix's upper triangle by
register tiles, the sums of exp(logvar), the (D, D) arithmetic and the penalty; its gradient in
closed form in torch ops, the centring redone chunk by chunk, exp(logvar) kept from the forward).
Baselines: the composed eager form (``dip_regulariser(dip_covariance(...))``, what DIPVAELoss ran
before) under ``torch.compile`` (what a compiler removes: the launches and the passes over the
(D, D) matrix), and disentanglement_lib's form E[mu mu^T] - E[mu] E[mu]^T written with a matmul
(no centring pass, at the cost of cancellation when the mean is large). The regulariser is ~0.1 %
of a DIP-VAE step of the paper's networks at B=64 (0.30 ms of 240 ms, measured 2026-11-30). Not
measured on a GPU (there the forward is the torch form).
"""
from __future__ import annotations

import pytest
import torch

from bench import common

OP = "dip_regulariser"
LAMBDA_OD, LAMBDA_D = 10.0, 10.0  # DIP-VAE-II's study setting (lambda_d = lambda_od)


def _ours(mu, logvar):
    from fastfvae.losses import dip_penalty

    return dip_penalty(mu, logvar, "ii", LAMBDA_OD, LAMBDA_D)


def _composed(mu, logvar):
    from fastfvae.losses import dip_covariance, dip_regulariser

    return dip_regulariser(dip_covariance(mu, logvar, "ii"), LAMBDA_OD, LAMBDA_D)


def _disentanglement_lib_form(mu, logvar):
    """compute_covariance_z_mean + DIP-II's expectation of diag(exp(logvar)), then the penalty."""
    batch = mu.shape[0]
    mean = mu.mean(dim=0)
    cov = mu.T @ mu / batch - torch.outer(mean, mean) + torch.diag(torch.exp(logvar).mean(dim=0))
    diagonal = torch.diagonal(cov)
    off_diagonal = cov - torch.diag(diagonal)
    return LAMBDA_OD * off_diagonal.pow(2).sum() + LAMBDA_D * (diagonal - 1).pow(2).sum()


def _missing() -> str | None:
    from fastfvae import losses

    if not hasattr(losses, "dip_penalty"):
        return "fastfvae.losses.dip_penalty does not exist yet"
    return None


def impls(device):
    missing = _missing()
    if missing:
        return [common.Impl("fastfvae", "fastfvae", skip=missing)]
    return [
        common.Impl("fastfvae[eager]", "fastfvae", make=lambda: lambda x: (_ours(x["mu"], x["logvar"]),)),
        common.compiled("compiled-composed", f"{OP}-{device}", lambda mu, lv: (_composed(mu, lv),), ("mu", "logvar")),
        common.eager("eager-dlib-form", lambda x: (_disentanglement_lib_form(x["mu"], x["logvar"]),)),
    ]


def sizes(device):
    return common.sizes_for(device, common.OP_SIZES, common.CUDA_EXTRA_SIZES)


@pytest.mark.parametrize("device,direction,size,impl", common.cases(impls, sizes))
def test_dip_regulariser(benchmark, device, direction, size, impl):
    batch, dim = size

    def make_inputs():
        return {"mu": common.randn((batch, dim), device, True),
                "logvar": common.randn((batch, dim), device, True, scale=0.5)}

    def grad_outputs(x):
        return (torch.randn((), device=device),)

    common.run_benchmark(benchmark, op=OP, device=device, direction=direction, size=size, impl=impl,
                         make_inputs=make_inputs, grad_outputs=grad_outputs)
