"""log_qz (beta-TCVAE's minibatch estimator of log q(z) and log prod_d q(z_d), method "mws").

fastfvae streams over the mixture components with an online logsumexp (memory O(B D)); the
baseline is the materialised reference (fastfvae.reference.log_qz: a B x B x D tensor, as public
implementations do) in eager and under torch.compile. The log_qz targets read off "full" at
B=2048, D=10: >= 3x faster and >= 50x less peak memory.
"""
from __future__ import annotations

import pytest
import torch

from bench import common
from fastfvae import reference

OP = "log_qz"
DATASET_SIZE = 737_280  # dSprites
ARGS = ("z", "mu", "logvar")


def _fastfvae(backend):
    import fastfvae.functional as ffv

    return lambda x: ffv.log_qz(x["z"], x["mu"], x["logvar"], dataset_size=DATASET_SIZE, method="mws",
                                backend=backend)


def _materialised(z, mu, logvar):
    return reference.log_qz(z, mu, logvar, DATASET_SIZE, "mws")


def impls(device):
    import fastfvae.functional as ffv

    if not hasattr(ffv, "log_qz"):
        ours = [common.Impl("fastfvae", "fastfvae", skip="fastfvae.functional.log_qz does not exist yet")]
    else:
        ours = common.fastfvae_impls(OP, device, _fastfvae)
    return ours + [
        common.eager("eager-reference-materialised", lambda x: _materialised(x["z"], x["mu"], x["logvar"])),
        common.compiled("compiled-reference-materialised", f"{OP}-{device}", _materialised, ARGS),
    ]


def sizes(device):
    return common.sizes_for(device, common.LOG_QZ_SIZES, common.LOG_QZ_CUDA_EXTRA)


# forward and forward + backward: the materialised reference takes seconds per call at B=2048 on
# 2 cores, so the backward-only direction (full minus forward) is left out to keep the suite short.
@pytest.mark.parametrize("device,direction,size,impl", common.cases(impls, sizes, directions=("forward", "full")))
def test_log_qz(benchmark, device, direction, size, impl):
    batch, dim = size

    def make_inputs():
        mu = common.randn((batch, dim), device, True)
        logvar = common.randn((batch, dim), device, True, scale=0.5)
        z = (mu.detach() + torch.exp(0.5 * logvar.detach()) * torch.randn_like(mu)).requires_grad_(True)
        return {"z": z, "mu": mu, "logvar": logvar}

    def grad_outputs(x):
        return (torch.randn(batch, device=device), torch.randn(batch, device=device))

    common.run_benchmark(benchmark, op=OP, device=device, direction=direction, size=size, impl=impl,
                         make_inputs=make_inputs, grad_outputs=grad_outputs, extra={"dataset_size": DATASET_SIZE})
