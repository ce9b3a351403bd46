"""permute_dims: the paper's Algorithm 1, every column permuted independently (DESIGN.md §1, §8)."""
from __future__ import annotations

import torch
from torch import Tensor

from fastfvae._checks import check_float_tensor
from fastfvae.ops._register import OpDeclaration, register
from fastfvae.ops._seed import draw_seed

__all__ = ["permute_dims"]  # the public functions (fastfvae/registry.py)


_op = register(OpDeclaration(
    name="permute_dims",
    # z (G, B, D) or (B, D), seed int64 (1,) -> out and int32 index (for the backward) of z's shape
    forward_schema="(Tensor z, Tensor seed) -> (Tensor, Tensor)",
    forward=lambda impl, z, seed: impl.permute_dims_forward(z, seed, True),
    inference=lambda impl, z, seed: impl.permute_dims_forward(z, seed, False),
    forward_fake=lambda z, seed: (z.new_empty(z.shape), z.new_empty(z.shape, dtype=torch.int32)),
    num_outputs=2,
    num_non_differentiable_outputs=1,
    save=lambda args, outputs: (outputs[1],),  # the index
    backward_schema="(Tensor grad_out, Tensor index) -> Tensor",
    backward=lambda impl, grad_out, index: impl.permute_dims_backward(grad_out, index),
    backward_fake=lambda grad_out, index: grad_out.new_empty(grad_out.shape),
    grad_inputs=(0,),
    dims={"z": "G B D", "grad_out": "G B D"},  # the backward reads them off the gradient
))


def permute_dims(z: Tensor, *, backend: str = "auto") -> Tensor:
    """Paper, Algorithm 1: every column gets its own uniform random permutation of the rows.

    z: (B, D), or (G, B, D) for G independent groups permuted in one launch.
    Returns a tensor of z's shape with out[..., i, d] = z[..., pi_{g,d}(i), d], the permutations
    drawn from torch's generator. Differentiable: the gradient is scattered back through pi.
    """
    check_float_tensor("z", z, (2, 3))
    out, _ = _op(backend, z, draw_seed(z.device))
    return out
