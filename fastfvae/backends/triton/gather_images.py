"""Triton kernel unpacking a batch of bit-packed binary 64x64 images (as
fastfvae/reference/gather_images.py; the bit order is "little": pixel p = 64 * row + col is bit
p % 8 of byte p // 8).

Launch: one program per image of the batch; it reads the image's 512 bytes (each byte once per
pixel lane: the 8 lanes of a byte hit the same cache line) and writes its 4096 pixels. An index
outside [0, N) gives an image of NaN; the index is read on the device (no host synchronisation).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastfvae.backends.triton._common import device_guard

ROW_BYTES = 512
PIXELS = ROW_BYTES * 8


@triton.jit
def _gather_images_forward_kernel(
    packed_ptr,  # (N, 512) uint8, row stride stride_n, bytes contiguous: bit-packed images
    index_ptr,  # (B,) int32 or int64, stride stride_b: the rows of packed to unpack
    out_ptr,  # (B, 4096) output dtype, contiguous: pixels 0/1 (NaN for an out-of-range index)
    N,
    stride_n,
    stride_b,
    PIXELS: tl.constexpr,
):
    """out[b, p] = (packed[index[b], p // 8] >> (p % 8)) & 1."""
    b = tl.program_id(0).to(tl.int64)
    row = tl.load(index_ptr + b * stride_b).to(tl.int64)
    valid = (row >= 0) & (row < N)
    pixels = tl.arange(0, PIXELS)
    byte = tl.load(packed_ptr + row * stride_n + pixels // 8, mask=valid & (pixels >= 0), other=0)
    bit = (byte.to(tl.int32) >> (pixels % 8)) & 1
    value = tl.where(valid, bit.to(tl.float32), float("nan"))
    tl.store(out_ptr + b * PIXELS + pixels, value.to(out_ptr.dtype.element_ty))


def gather_images_forward(packed, index, dtype):
    """packed uint8 (N, 512), index int32/int64 (B,) -> (B, 1, 64, 64) of dtype."""
    if packed.stride(1) != 1:
        packed = packed.contiguous()
    batch = index.shape[0]
    out = torch.empty((batch, 1, 64, 64), dtype=dtype, device=packed.device)
    with device_guard(packed):
        _gather_images_forward_kernel[(batch,)](
            packed, index, out, packed.shape[0], packed.stride(0), index.stride(0), PIXELS=PIXELS,
        )
    return out
