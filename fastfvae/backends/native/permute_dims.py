"""The native permute_dims: every column of each group permuted independently
(kernels/cpu/permute_dims.cpp, kernels/cuda/permute_dims.cu). z is (G, B, D) or (B, D); the
index is int32 source rows of z's shape, contiguous.
"""
from __future__ import annotations

import torch

from fastfvae.backends import grouped_sizes
from fastfvae.backends.native.library import (
    DTYPE_CODES, _call, declare_entry_points, dtype_code, i64, ptr, strided3, _workspace, _workspace_args,
)

declare_entry_points("permute_dims", {
    "ffv_permute_dims_forward": (
        dtype_code, i64, i64, i64, *strided3, ptr, ptr, ptr,  # dtype G B D z seed out index
        ptr, i64, ptr,  # workspace workspace_bytes stream
    ),
    "ffv_permute_dims_workspace_bytes": (dtype_code, i64, i64, i64, ptr),  # dtype G B D bytes*
    "ffv_permute_dims_backward": (
        dtype_code, i64, i64, i64, *strided3, ptr, ptr, ptr,  # dtype G B D grad_out index grad_z stream
    ),
})


def permute_dims_forward(z, seed, need_index):
    groups, batch, dim, *z_s = grouped_sizes(z)
    # Sizes unpacked: torch parses a torch.Size argument about a microsecond slower.
    out = z.new_empty(*z.shape)
    index = z.new_empty(*z.shape, dtype=torch.int32) if need_index else None
    workspace = _workspace("permute_dims", z, DTYPE_CODES[z.dtype], groups, batch, dim)
    _call(
        "ffv_permute_dims_forward", z,
        DTYPE_CODES[z.dtype], groups, batch, dim,
        z.data_ptr(), *z_s,
        seed.data_ptr(), out.data_ptr(), index.data_ptr() if need_index else None,
        *_workspace_args(workspace),
    )
    return out, index


def permute_dims_backward(grad_out, index):
    groups, batch, dim, *g_s = grouped_sizes(grad_out)
    if index.dtype != torch.int32 or index.shape != grad_out.shape:
        raise ValueError(
            f"index: expected int32 {tuple(grad_out.shape)} from permute_dims_forward, "
            f"got {index.dtype} {tuple(index.shape)}"
        )
    index = index.contiguous()
    grad_z = grad_out.new_empty(*grad_out.shape)
    _call(
        "ffv_permute_dims_backward", grad_out,
        DTYPE_CODES[grad_out.dtype], groups, batch, dim,
        grad_out.data_ptr(), *g_s,
        index.data_ptr(), grad_z.data_ptr(),
    )
    return grad_z


INT32_MAX = 2**31 - 1


def limits(dims: dict) -> list[str]:
    """Every size of this call the native kernels cannot take (``dims``: G, B, D)."""
    if dims.get("B", 0) > INT32_MAX:
        return [f"permute_dims writes int32 row indices: B must be <= {INT32_MAX}, got {dims['B']}"]
    return []
