"""dip_regulariser: DIP-VAE's covariance penalty, does it earn its own kernel?

What is timed: the DIP-VAE-II regulariser of ``fastfvae.losses`` (``dip_covariance`` then
``dip_regulariser``: centre mu, mu_c^T mu_c / B, add diag(mean exp(logvar)), weighted squared
distance from the identity) on (B, D) mu and logvar, in eager PyTorch: this is what
``DIPVAELoss`` runs (it has no kernel of its own). Baselines: the same code under
``torch.compile`` (what a fused kernel could at best remove: the launches and the passes over
the (D, D) matrix) and disentanglement_lib's form E[mu mu^T] - E[mu] E[mu]^T written with a
matmul. A kernel pays only if the compiled row is clearly faster AND the eager regulariser is a
visible share of a DIP-VAE training step. Measured 2026-11-30 on the shared 2-core CPU (one
thread, interleaved, min of 3x200): fwd+bwd eager 0.30 ms vs compiled 0.21 ms at B=64, D=10;
compiled slower at B=4096, D=32 (1.50 vs 1.17 ms) and B=65536, D=64 (147 vs 110 ms: the matmul
dominates); 0.30 ms is 0.12% of a 240 ms DIP-VAE step of the paper's networks at B=64. No
kernel: at most ~0.1 ms per step to gain on the CPU. (Not measured on a GPU.)
"""
from __future__ import annotations

import pytest
import torch

from bench import common

OP = "dip_regulariser"
LAMBDA_OD, LAMBDA_D = 10.0, 10.0  # DIP-VAE-II's study setting (lambda_d = lambda_od)


def _ours(mu, logvar):
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

    if not hasattr(losses, "dip_covariance"):
        return "fastfvae.losses.dip_covariance does not exist yet"
    return None


def impls(device):
    missing = _missing()
    if missing:
        return [common.Impl("fastfvae", "fastfvae", skip=missing)]
    return [
        common.Impl("fastfvae[eager]", "fastfvae", make=lambda: lambda x: (_ours(x["mu"], x["logvar"]),)),
        common.compiled("compiled-fastfvae", f"{OP}-{device}", lambda mu, lv: (_ours(mu, lv),), ("mu", "logvar")),
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
