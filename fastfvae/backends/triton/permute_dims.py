"""Triton kernels for permute_dims (paper, Algorithm 1; DESIGN.md §8).

Every column d of every group g gets its own permutation P[g, :, d] = reference.philox_permutation:
for row i the Philox counter is (g*B + i)*D + d, and with (c0, c1) = tl.randint4x(seed, counter)
the sort key is the 63-bit int ((c0 & 0x7fffffff) << 32 | c1) with its low ROW_BITS =
max(1, bit_length(B - 1)) bits replaced by i. Keys of one column are distinct (their low bits
differ), so sorting them is tie-free; the row bits of the k-th smallest key give P[g, k, d].

Launches:
- forward, B <= SORT_IN_KERNEL_MAX_B: 1. One program per (group, tile of columns) builds the
  keys of its (BLOCK_D, BLOCK_B) tile, sorts each column with tl.sort (bitonic, in registers) and
  gathers out[g, k, d] = z[g, P[g, k, d], d]; it writes the int32 index only when asked.
- forward, larger B (fallback): 3, none of which syncs the host: a key kernel writes keys as
  (G, D, B) int64, torch.sort sorts each contiguous row of B keys, a gather kernel reads the
  sorted keys and writes out (and the index).
- backward: 1 scatter, grad_z[g, P[g, k, d], d] = grad_out[g, k, d]. P is a permutation of every
  column, so each element of grad_z is written exactly once (no zero fill needed).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastfvae.backends import grouped_sizes
from fastfvae.backends.triton._common import GRID_LIMITS, checked_grid, device_guard, next_pow2

# Largest B sorted inside one program. The bitonic sort keeps a column's keys in registers:
# compiled for sm_90 with 8 warps (ptxas -v, no GPU needed), a 4096-key tile takes 188 registers
# per thread and no spills, an 8192-key tile hits the 255-register cap. Above the limit, torch.sort
# (radix sort over global memory) scales better. Tests monkeypatch it to reach the fallback at small B.
SORT_IN_KERNEL_MAX_B = 4096
# Keys per program in the in-kernel sort: BLOCK_D = SORT_TILE_ELEMENTS // BLOCK_B columns.
SORT_TILE_ELEMENTS = 4096
# Tile of the elementwise kernels (key fallback, gather fallback, backward scatter).
TILE_B = 64
TILE_D = 16
_INT64_MAX = tl.constexpr(0x7FFFFFFFFFFFFFFF)  # a padding key above every real key


@triton.jit
def _philox_keys(seed, group, rows, cols, B, D, row_mask):
    """Sort keys (int64, broadcast shape of rows and cols) of elements (group, rows, cols):
    ((c0 & 0x7fffffff) << 32 | c1) & ~row_mask | row, with (c0, c1) from the counter (g*B+i)*D+d."""
    counters = (group * B + rows) * D + cols
    c0, c1, _, _ = tl.randint4x(seed, counters)
    high = (c0 & 0x7FFFFFFF).to(tl.uint64) << 32  # uint32 -> uint64 zero-extends
    key = (high | c1.to(tl.uint64)).to(tl.int64, bitcast=True)
    return (key & ~row_mask) | rows


@triton.jit
def _permute_dims_sort_kernel(
    z_ptr,  # (G, B, D) input dtype, strided: the samples to permute
    seed_ptr,  # (1,) int64: Philox seed, read on the device
    out_ptr,  # (G, B, D) input dtype, contiguous: out[g, k, d] = z[g, P[g, k, d], d]
    index_ptr,  # (G, B, D) int32, contiguous: P (written when NEED_INDEX)
    B,
    D,
    row_mask,  # (1 << ROW_BITS) - 1
    stride_zg,
    stride_zb,
    stride_zd,
    NEED_INDEX: tl.constexpr,
    BLOCK_B: tl.constexpr,  # next power of 2 >= B
    BLOCK_D: tl.constexpr,
):
    """P[g, :, d] = row bits of sort(keys of column d) (keys as in _philox_keys); gather z.

    The tile is (BLOCK_D, BLOCK_B) because tl.sort sorts along the last axis. Rows past B get the
    key INT64_MAX, larger than every real key (padding exists only when B is not a power of 2, and
    then a real key's row bits are <= B - 1 < row_mask), so they sort to the end, never stored."""
    group = tl.program_id(0).to(tl.int64)
    cols = (tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)[:, None]  # (BLOCK_D, 1)
    rows = tl.arange(0, BLOCK_B).to(tl.int64)[None, :]  # (1, BLOCK_B)
    seed = tl.load(seed_ptr)
    mask64 = tl.full((1, 1), 0, tl.int64) + row_mask
    keys = _philox_keys(seed, group, rows, cols, B, D, mask64)
    keys = tl.where(rows < B, keys, _INT64_MAX)
    source = tl.sort(keys, dim=1) & mask64  # (BLOCK_D, BLOCK_B): P[g, k, d] at [d, k]
    ok = (rows < B) & (cols < D)
    values = tl.load(z_ptr + group * stride_zg + source * stride_zb + cols * stride_zd, mask=ok, other=0.0)
    out = (group * B + rows) * D + cols
    tl.store(out_ptr + out, values, mask=ok)
    if NEED_INDEX:
        tl.store(index_ptr + out, source.to(tl.int32), mask=ok)


@triton.jit
def _permute_dims_keys_kernel(
    seed_ptr,  # (1,) int64: Philox seed, read on the device
    keys_ptr,  # (G, D, B) int64, contiguous: output sort keys, one contiguous row per column
    B,
    D,
    row_mask,  # (1 << ROW_BITS) - 1
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """keys[g, d, i] = ((c0 & 0x7fffffff) << 32 | c1) & ~row_mask | i, counter (g*B + i)*D + d."""
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)[:, None]
    cols = (tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)[None, :]
    group = tl.program_id(2).to(tl.int64)
    seed = tl.load(seed_ptr)
    mask64 = tl.full((1, 1), 0, tl.int64) + row_mask
    keys = _philox_keys(seed, group, rows, cols, B, D, mask64)
    ok = (rows < B) & (cols < D)
    tl.store(keys_ptr + (group * D + cols) * B + rows, keys, mask=ok)


@triton.jit
def _permute_dims_gather_kernel(
    z_ptr,  # (G, B, D) input dtype, strided: the samples to permute
    sorted_keys_ptr,  # (G, D, B) int64, contiguous: each column's keys in ascending order
    out_ptr,  # (G, B, D) input dtype, contiguous: out[g, k, d] = z[g, P[g, k, d], d]
    index_ptr,  # (G, B, D) int32, contiguous: P (written when NEED_INDEX)
    B,
    D,
    row_mask,  # (1 << ROW_BITS) - 1
    stride_zg,
    stride_zb,
    stride_zd,
    NEED_INDEX: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """P[g, k, d] = sorted_keys[g, d, k] & row_mask; out[g, k, d] = z[g, P[g, k, d], d]."""
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)[:, None]
    cols = (tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)[None, :]
    group = tl.program_id(2).to(tl.int64)
    ok = (rows < B) & (cols < D)
    mask64 = tl.full((1, 1), 0, tl.int64) + row_mask
    source = tl.load(sorted_keys_ptr + (group * D + cols) * B + rows, mask=ok, other=0) & mask64
    values = tl.load(z_ptr + group * stride_zg + source * stride_zb + cols * stride_zd, mask=ok, other=0.0)
    out = (group * B + rows) * D + cols
    tl.store(out_ptr + out, values, mask=ok)
    if NEED_INDEX:
        tl.store(index_ptr + out, source.to(tl.int32), mask=ok)


@triton.jit
def _permute_dims_backward_kernel(
    grad_out_ptr,  # (G, B, D) input dtype, strided (may be stride-0 expanded): dL/dout
    index_ptr,  # (G, B, D) int32, strided: P from the forward
    grad_z_ptr,  # (G, B, D) input dtype, contiguous: output dL/dz
    B,
    D,
    stride_gg,
    stride_gb,
    stride_gd,
    stride_ig,
    stride_ib,
    stride_id,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """grad_z[g, P[g, k, d], d] = grad_out[g, k, d] (a permutation: every element written once)."""
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)[:, None]
    cols = (tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)[None, :]
    group = tl.program_id(2).to(tl.int64)
    ok = (rows < B) & (cols < D)
    source = tl.load(index_ptr + group * stride_ig + rows * stride_ib + cols * stride_id, mask=ok, other=0)
    grad = tl.load(grad_out_ptr + group * stride_gg + rows * stride_gb + cols * stride_gd, mask=ok, other=0.0)
    tl.store(grad_z_ptr + (group * B + source.to(tl.int64)) * D + cols, grad, mask=ok)


def _row_mask(batch: int) -> int:
    return (1 << max(1, (batch - 1).bit_length())) - 1


def _tile_grid(groups: int, batch: int, dim: int) -> tuple[tuple[int, int, int], int, int]:
    block_b = min(TILE_B, next_pow2(batch))
    block_d = min(TILE_D, next_pow2(dim))
    # Row blocks on grid axis 0 (up to 2**31 - 1 programs); axes 1 and 2 are limited to 65535.
    grid = (triton.cdiv(batch, block_b), triton.cdiv(dim, block_d), groups)
    return checked_grid(grid, "permute_dims"), block_b, block_d


def permute_dims_forward(z, seed, need_index):
    """z: (G, B, D) or (B, D); seed: int64 (1,). Returns out and the int32 index P (or None), both
    of z's shape."""
    groups, batch, dim, z_sg, z_sb, z_sd = grouped_sizes(z)
    out = torch.empty(z.shape, dtype=z.dtype, device=z.device)
    index = torch.empty(z.shape, dtype=torch.int32, device=z.device) if need_index else None
    index_arg = index if need_index else out
    row_mask = _row_mask(batch)
    with device_guard(z):
        if batch <= SORT_IN_KERNEL_MAX_B:
            block_b = next_pow2(batch)
            block_d = max(1, min(next_pow2(dim), SORT_TILE_ELEMENTS // block_b))
            grid = checked_grid((groups, triton.cdiv(dim, block_d)), "permute_dims")
            _permute_dims_sort_kernel[grid](
                z, seed, out, index_arg, batch, dim, row_mask, z_sg, z_sb, z_sd,
                NEED_INDEX=need_index, BLOCK_B=block_b, BLOCK_D=block_d,
                num_warps=8 if block_b * block_d >= 2048 else 4,
            )
            return out, index
        grid, block_b, block_d = _tile_grid(groups, batch, dim)
        keys = torch.empty((groups, dim, batch), dtype=torch.int64, device=z.device)
        _permute_dims_keys_kernel[grid](seed, keys, batch, dim, row_mask, BLOCK_B=block_b, BLOCK_D=block_d)
        sorted_keys = torch.sort(keys, dim=-1).values
        _permute_dims_gather_kernel[grid](
            z, sorted_keys, out, index_arg, batch, dim, row_mask, z_sg, z_sb, z_sd,
            NEED_INDEX=need_index, BLOCK_B=block_b, BLOCK_D=block_d,
        )
    return out, index


def permute_dims_backward(grad_out, index):
    """grad_out: (G, B, D) or (B, D); index: int32 of its shape, from the forward. Returns grad_z
    of that shape."""
    groups, batch, dim, *grad_strides = grouped_sizes(grad_out)
    index_strides = grouped_sizes(index)[3:]
    grad_z = torch.empty(grad_out.shape, dtype=grad_out.dtype, device=grad_out.device)
    grid, block_b, block_d = _tile_grid(groups, batch, dim)
    with device_guard(grad_out):
        _permute_dims_backward_kernel[grid](
            grad_out, index, grad_z, batch, dim,
            *grad_strides, *index_strides,
            BLOCK_B=block_b, BLOCK_D=block_d,
        )
    return grad_z


def limits(dims: dict) -> list[str]:
    """The sizes this op's kernels cannot take (``dims``: G, B, D): groups run on CUDA grid
    axis 2 and column tiles of TILE_D on axis 1."""
    found, axis_max, dim = [], GRID_LIMITS[1], dims.get("D", 0)
    if dims.get("G", 1) > axis_max:
        found.append(f"groups run on CUDA grid axis 2: G must be <= {axis_max}, got {dims['G']}")
    if -(-dim // TILE_D) > axis_max:
        found.append(f"column tiles run on CUDA grid axis 1: D must be <= {axis_max * TILE_D}, got {dim}")
    return found
