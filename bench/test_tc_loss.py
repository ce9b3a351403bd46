"""tc_loss: the VAE's total-correlation estimate from 2-logit discriminator output, mean(l0 - l1).

Inputs are (B, 2) logits (the group's D is the logit count, 2). Baselines: 1Konny's slicing
form in eager, and torch.compile of the reference formula.
"""
from __future__ import annotations

import pytest
import torch

from bench import common
from bench import baselines
from fastfvae import reference

OP = "tc_loss"
LOGITS = 2


def _fastfvae(backend):
    import fastfvae.functional as ffv

    return lambda x: (ffv.tc_loss(x["logits"], backend=backend),)


def impls(device):
    return common.fastfvae_impls(OP, device, _fastfvae) + [
        common.eager("eager-1konny", lambda x: (baselines.konny_tc(x["logits"]),)),
        common.compiled("compiled-reference", f"{OP}-{device}", lambda l: (reference.tc_loss(l),), ("logits",)),
    ]


def sizes(device):
    return [(batch, LOGITS) for batch, _ in common.sizes_for(device, common.OP_SIZES, common.CUDA_EXTRA_SIZES)]


@pytest.mark.parametrize("device,direction,size,impl", common.cases(impls, sizes))
def test_tc_loss(benchmark, device, direction, size, impl):
    batch, k = size

    def make_inputs():
        return {"logits": common.randn((batch, k), device, True)}

    def grad_outputs(x):
        return (torch.randn((), device=device),)

    common.run_benchmark(benchmark, op=OP, device=device, direction=direction, size=size, impl=impl,
                         make_inputs=make_inputs, grad_outputs=grad_outputs)
