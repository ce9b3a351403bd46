"""The reference of permute_dims (the paper's Algorithm 1): every column of each group gets its
own uniform random permutation of the rows, drawn by ``philox_permutation``; and the reference
backend's launchers.

Shapes: G = independent groups, B = batch, D = latent size.
"""
from __future__ import annotations

import torch

from fastfvae.reference.philox import philox_permutation

__all__ = ["permute_dims"]


def permute_dims(z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Paper, Algorithm 1, with the permutations given.

    z: (B, D) or (G, B, D); index: int64 of the same shape, each column of each group a
    permutation of range(B). out[..., i, d] = z[..., index[..., i, d], d].
    """
    return torch.gather(z, -2, index)


# The reference backend's launchers (the protocol of fastfvae/backends/__init__.py).
def permute_dims_forward(z, seed, need_index):
    """z: (G, B, D) or (B, D) as one group. Returns out and the int32 index, both of z's shape."""
    groups, batch, dim = z.shape if z.dim() == 3 else (1, *z.shape)
    index = philox_permutation(seed, groups, batch, dim, device=z.device).view(z.shape)
    return permute_dims(z, index), (index.to(torch.int32) if need_index else None)


def permute_dims_backward(grad_out, index):
    """index: int32 source rows of grad_out's shape; grad_z[..., index[..., i, d], d] = grad_out[..., i, d]."""
    return torch.zeros_like(grad_out).scatter_(-2, index.long(), grad_out)
