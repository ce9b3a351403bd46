"""discriminator_loss: 0.5 * (CE(d_real, class 0) + CE(d_perm, class 1)) on (B, 2) logits.

The group's D is the logit count, 2. Baselines: 1Konny's two cross-entropies in eager, and
torch.compile of the reference formula.
"""
from __future__ import annotations

import pytest
import torch

from bench import common
from bench import baselines
from fastfvae import reference

OP = "discriminator_loss"
LOGITS = 2


def _fastfvae(backend):
    import fastfvae.functional as ffv

    return lambda x: (ffv.discriminator_loss(x["d_real"], x["d_perm"], backend=backend),)


def impls(device):
    return common.fastfvae_impls(OP, device, _fastfvae) + [
        common.eager("eager-1konny", lambda x: (baselines.konny_discriminator_loss(x["d_real"], x["d_perm"]),)),
        common.compiled("compiled-reference", f"{OP}-{device}",
                        lambda r, p: (reference.discriminator_loss(r, p),), ("d_real", "d_perm")),
    ]


def sizes(device):
    return [(batch, LOGITS) for batch, _ in common.sizes_for(device, common.OP_SIZES, common.CUDA_EXTRA_SIZES)]


@pytest.mark.parametrize("device,direction,size,impl", common.cases(impls, sizes))
def test_discriminator_loss(benchmark, device, direction, size, impl):
    batch, k = size

    def make_inputs():
        return {"d_real": common.randn((batch, k), device, True), "d_perm": common.randn((batch, k), device, True)}

    def grad_outputs(x):
        return (torch.randn((), device=device),)

    common.run_benchmark(benchmark, op=OP, device=device, direction=direction, size=size, impl=impl,
                         make_inputs=make_inputs, grad_outputs=grad_outputs)
