"""The reference of gather_images: rows of bit-packed binary 64x64 images unpacked to a float
batch; and the reference backend's launcher (forward only: the input is uint8).

Shapes: N packed rows, B gathered images.
"""
from __future__ import annotations

import torch

__all__ = ["PACKED_IMAGE_SIDE", "PACKED_ROW_BYTES", "unpack_images", "pack_images", "gather_images"]


# =============================================================================================
# gather_images: binary 64x64 images bit-packed to 512 bytes a row (fastfvae/data/packed.py).
#
# Bit order ("little", LSB first): pixel p = 64 * row + col of an image (row-major, y down) is
# bit (p % 8) of byte p // 8, i.e. pixel = (packed[i, p // 8] >> (p % 8)) & 1. This is
# numpy.packbits(pixels, bitorder="little") of the flattened image.
# An index outside [0, N) gives an image of NaN (no backend reads the index on the host, so
# none can raise without synchronising; NaN reaches the trainer's non-finite check).
# =============================================================================================
PACKED_IMAGE_SIDE = 64
PACKED_ROW_BYTES = PACKED_IMAGE_SIDE * PACKED_IMAGE_SIDE // 8  # 512


def unpack_images(packed: torch.Tensor) -> torch.Tensor:
    """packed uint8 (n, 512) -> uint8 (n, 64, 64) of 0/1, bit order as above."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1                      # (n, 512, 8): bit j of byte k
    return bits.reshape(-1, PACKED_IMAGE_SIDE, PACKED_IMAGE_SIDE)    # pixel 8k + j


def pack_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 / bool (n, 64, 64) or (n, 1, 64, 64) of 0/1 -> uint8 (n, 512); inverse of unpack_images."""
    bits = images.reshape(-1, PACKED_ROW_BYTES, 8).to(torch.int32)
    weights = 1 << torch.arange(8, dtype=torch.int32, device=images.device)
    return (bits * weights).sum(dim=-1).to(torch.uint8)


def gather_images(packed: torch.Tensor, index: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """out[b, 0] = unpack_images(packed[index[b]]) as ``dtype``, (B, 1, 64, 64); NaN images for
    indices outside [0, N)."""
    rows = packed.shape[0]
    index = index.long()
    valid = (index >= 0) & (index < rows)
    safe = torch.where(valid, index, torch.zeros_like(index))       # no out-of-range read
    images = unpack_images(packed[safe]).to(dtype)
    nan = torch.full((), float("nan"), dtype=dtype, device=packed.device)
    return torch.where(valid.reshape(-1, 1, 1), images, nan).unsqueeze(1)


# The reference backend's launcher (the protocol of fastfvae/backends/__init__.py).
def gather_images_forward(packed, index, dtype):
    return gather_images(packed, index, dtype)
