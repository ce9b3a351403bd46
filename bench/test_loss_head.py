"""The FactorVAE loss head: everything one training step computes outside the networks.

reparameterise + KL on batch 1, TC term from the discriminator's logits on z, reparameterise on
batch 2 (fastfvae under no_grad, as its trainer; 1Konny with a graph, detached after the
permutation), permute_dims of z', discriminator loss on z (detached) and permute_dims(z')
-- forward, and forward + backward of both losses ("full"). A fixed linear map D -> 2 (weights
that require grad, fresh per round) stands in for the discriminator. Implementations come from
bench.baselines: fastfvae_loss_head (per backend) vs konny_loss_head (1Konny-style eager) vs
torch.compile of reference_loss_head. The loss-head targets are read off this group ("full").
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench import common
from bench import baselines

OP = "loss_head"
ARGS = ("mu", "logvar", "mu2", "logvar2", "weight", "bias")


def _linear(weight, bias):
    return lambda x: F.linear(x, weight, bias)


def _fastfvae(backend):
    def forward(x):
        return baselines.fastfvae_loss_head(x["mu"], x["logvar"], x["mu2"], x["logvar2"],
                                            _linear(x["weight"], x["bias"]), backend=backend)
    return forward


def _konny(x):
    return baselines.konny_loss_head(x["mu"], x["logvar"], x["mu2"], x["logvar2"], _linear(x["weight"], x["bias"]))


def _reference(mu, logvar, mu2, logvar2, weight, bias):
    return baselines.reference_loss_head(mu, logvar, mu2, logvar2, _linear(weight, bias))


def impls(device):
    return common.fastfvae_impls("reparameterize_kl", device, _fastfvae,
                                 needs=("permute_dims", "tc_loss", "discriminator_loss")) + [
        common.eager("eager-1konny", _konny),
        common.compiled("compiled-reference", f"{OP}-{device}", _reference, ARGS),
    ]


def sizes(device):
    return common.sizes_for(device, common.LOSS_HEAD_SIZES, common.LOSS_HEAD_CUDA_EXTRA)


@pytest.mark.parametrize("device,direction,size,impl", common.cases(impls, sizes, directions=("forward", "full")))
def test_loss_head(benchmark, device, direction, size, impl):
    batch, dim = size

    def make_inputs():
        return {"mu": common.randn((batch, dim), device, True),
                "logvar": common.randn((batch, dim), device, True, scale=0.5),
                "mu2": common.randn((batch, dim), device, True),
                "logvar2": common.randn((batch, dim), device, True, scale=0.5),
                "weight": common.randn((2, dim), device, True, scale=dim ** -0.5),
                "bias": common.randn((2,), device, True)}

    def grad_outputs(x):
        return (torch.ones((), device=device), torch.ones((), device=device))

    common.run_benchmark(benchmark, op=OP, device=device, direction=direction, size=size, impl=impl,
                         make_inputs=make_inputs, grad_outputs=grad_outputs)
