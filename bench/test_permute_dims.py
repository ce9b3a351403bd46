"""permute_dims (paper, Algorithm 1): every column gets its own random permutation of the rows.

Baselines: the per-column randperm loop (1Konny), rand().argsort() + gather (the common
vectorised form) in eager and under torch.compile. Memory-bound: bytes_moved counts the values
read and written once (an index, where an implementation keeps one, is extra traffic).
In a FactorVAE step the permuted z is detached, so "forward" is the direction training uses.
"""
from __future__ import annotations

import pytest
import torch

from bench import common
from bench import baselines

OP = "permute_dims"


def _fastfvae(backend):
    import fastfvae.functional as ffv

    return lambda x: (ffv.permute_dims(x["z"], backend=backend),)


def impls(device):
    return common.fastfvae_impls(OP, device, _fastfvae) + [
        common.eager("randperm-loop-1konny", lambda x: (baselines.konny_permute_dims(x["z"]),)),
        common.eager("argsort-gather", lambda x: (baselines.argsort_permute_dims(x["z"]),)),
        common.compiled("compiled-argsort-gather", f"{OP}-{device}",
                        lambda z: (baselines.argsort_permute_dims(z),), ("z",)),
    ]


def sizes(device):
    return common.sizes_for(device, common.OP_SIZES + common.PERMUTE_EXTRA_SIZES, common.CUDA_EXTRA_SIZES)


def bytes_moved(direction, batch, dim):
    """float32 bytes: forward reads z and writes out; backward reads grad_out and writes grad_z."""
    return {"forward": 2, "backward": 2, "full": 4}[direction] * batch * dim * 4


@pytest.mark.parametrize("device,direction,size,impl", common.cases(impls, sizes))
def test_permute_dims(benchmark, copy_gbps, device, direction, size, impl):
    batch, dim = size

    def make_inputs():
        return {"z": common.randn((batch, dim), device, True)}

    def grad_outputs(x):
        return (torch.randn(batch, dim, device=device),)

    common.run_benchmark(benchmark, op=OP, device=device, direction=direction, size=size, impl=impl,
                         make_inputs=make_inputs, grad_outputs=grad_outputs,
                         bytes_moved=bytes_moved(direction, batch, dim), copy_gbps=copy_gbps(device))
