"""The native gather_images: bit-packed images unpacked to floats
(kernels/cpu/gather_images.cpp, kernels/cuda/gather_images.cu). Forward only: the packed table and the index have no gradient.
"""
from __future__ import annotations

import torch

from fastfvae.backends.native.library import (
    DTYPE_CODES, _call, declare_entry_points, dtype_code, i32, i64, ptr,
)

declare_entry_points("gather_images", {
    "ffv_gather_images_forward": (  # forward only: the packed table and the index have no gradient
        dtype_code, i64, i64, ptr, i64,  # dtype N B packed(s0)
        ptr, i64, i32, ptr, ptr,  # index(s0) index_is_int32 out stream
    ),
})


def gather_images_forward(packed, index, dtype):
    """packed uint8 (N, 512), index int32/int64 (B,) -> (B, 1, 64, 64) of dtype (NaN images for
    indices outside [0, N))."""
    if packed.stride(1) != 1:
        packed = packed.contiguous()  # the kernels read the bytes of a row contiguously
    rows, batch = packed.shape[0], index.shape[0]
    out = torch.empty((batch, 1, 64, 64), dtype=dtype, device=packed.device)
    _call(
        "ffv_gather_images_forward", packed,
        DTYPE_CODES[dtype], rows, batch, packed.data_ptr(), packed.stride(0),
        index.data_ptr(), index.stride(0), int(index.dtype == torch.int32), out.data_ptr(),
    )
    return out
