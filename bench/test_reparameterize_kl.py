"""reparameterize_kl: fused z = mu + exp(logvar/2) * eps and Gaussian KL, forward/backward/full.

fastfvae draws eps inside the kernel; the baselines draw it with torch.randn (1Konny-style eager,
and torch.compile of the reference formulas), so every implementation does the same work.
Memory-bound: bytes_moved counts the fewest bytes the op must move (each input read once, each
output written once; eps drawn in place), the same figure for every implementation.
"""
from __future__ import annotations

import pytest
import torch

from bench import common
from bench import baselines
from fastfvae import reference

OP = "reparameterize_kl"


def _fastfvae(backend):
    import fastfvae.functional as ffv

    return lambda x: ffv.reparameterize_kl(x["mu"], x["logvar"], backend=backend)


def _eager_1konny(x):
    return baselines.konny_reparametrize(x["mu"], x["logvar"]), baselines.konny_kl_divergence(x["mu"], x["logvar"])


def _reference_with_torch_rng(mu, logvar):
    return reference.reparameterize(mu, logvar, torch.randn_like(mu)), reference.gaussian_kl(mu, logvar)


def impls(device):
    return common.fastfvae_impls(OP, device, _fastfvae) + [
        common.eager("eager-1konny", _eager_1konny),
        common.compiled("compiled-reference", f"{OP}-{device}", _reference_with_torch_rng, ("mu", "logvar")),
    ]


def bytes_moved(direction, batch, dim):
    """float32 bytes: forward reads mu, logvar, writes z; backward reads grad_z, mu, logvar, z and
    writes grad_mu, grad_logvar (per-row KL terms are O(B), left out)."""
    per_element = {"forward": 3, "backward": 6, "full": 9}[direction]
    return per_element * batch * dim * 4


@pytest.mark.parametrize("device,direction,size,impl",
                         common.cases(impls, lambda d: common.sizes_for(d, common.OP_SIZES, common.CUDA_EXTRA_SIZES)))
def test_reparameterize_kl(benchmark, copy_gbps, device, direction, size, impl):
    batch, dim = size

    def make_inputs():
        return {"mu": common.randn((batch, dim), device, True),
                "logvar": common.randn((batch, dim), device, True, scale=0.5)}

    def grad_outputs(x):
        return (torch.randn(batch, dim, device=device), torch.randn((), device=device))

    common.run_benchmark(benchmark, op=OP, device=device, direction=direction, size=size, impl=impl,
                         make_inputs=make_inputs, grad_outputs=grad_outputs,
                         bytes_moved=bytes_moved(direction, batch, dim), copy_gbps=copy_gbps(device))
