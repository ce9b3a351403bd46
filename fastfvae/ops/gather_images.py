"""gather_images: a batch of binary 64x64 images unpacked from a bit-packed table in one pass
(the data path of a training step with the data set resident on the device; DESIGN.md §12).

The table is ``fastfvae.data.DSprites.packed_images()``: uint8 (N, 512), row i the image of
index i, bit order "little" (pixel p = 64 * row + col is bit p % 8 of byte p // 8; see
fastfvae/reference/gather_images.py). No backward: neither the table nor the index has a gradient.

Eager calls go straight to the backend's launcher; under ``torch.compile`` the op is the
``torch.library`` custom op ``fastfvae::gather_images`` with a fake implementation, so a compiled
step traces it without a graph break. (Not declared through fastfvae/ops/_register.py: that
helper pairs every op with a backward, and this one has none.)
"""
from __future__ import annotations

import torch
from torch import Tensor

from fastfvae import reference
from fastfvae._checks import check_choice, check_gather_index
from fastfvae.backends import BACKEND_NAMES, ENVIRONMENT_VARIABLE, get_backend, requested_from_environment, select
from fastfvae.ops._register import _functorch_active

__all__ = ["gather_images"]  # the public functions (fastfvae/registry.py)

ROW_BYTES = reference.PACKED_ROW_BYTES
SIDE = reference.PACKED_IMAGE_SIDE


@torch.library.custom_op("fastfvae::gather_images", mutates_args=())
def _gather_images_op(packed: Tensor, index: Tensor, dtype: torch.dtype, backend: str) -> Tensor:
    # ``backend`` is the requested name, resolved here with the real tensors (nothing about
    # dispatch is traced; fastfvae/ops/_register.py says why).
    return select("gather_images", backend, packed.device, dtype).gather_images_forward(packed, index, dtype)


@_gather_images_op.register_fake
def _(packed, index, dtype, backend):
    return packed.new_empty((index.shape[0], 1, SIDE, SIDE), dtype=dtype)


def _check_inputs(packed, index, dtype) -> None:
    """Metadata only: the index values are never read on the host (that would synchronise a
    CUDA step); out-of-range indices give NaN images instead."""
    if not isinstance(packed, torch.Tensor):
        raise TypeError(f"packed: expected a torch.Tensor, got {type(packed).__name__}")
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed: expected dtype torch.uint8 (bit-packed images), got {packed.dtype}")
    if packed.dim() != 2 or packed.shape[1] != ROW_BYTES or packed.shape[0] == 0:
        raise ValueError(
            f"packed: expected shape (N, {ROW_BYTES}) with N >= 1 (64x64 binary images, 8 pixels "
            f"a byte), got {tuple(packed.shape)}"
        )
    check_gather_index(index, "packed", packed, dtype)


def gather_images(packed: Tensor, index: Tensor, dtype: torch.dtype = torch.float32, *,
                  backend: str = "auto") -> Tensor:
    """out[b, 0] = the image of row index[b] of ``packed``, unpacked to 0/1 values of ``dtype``.

    packed: uint8 (N, 512), bit-packed 64x64 binary images (bit order in the module docstring).
    index: int64 or int32 (B,), on packed's device. An index outside [0, N) gives an image of
    NaN (never an out-of-bounds read; the index is not checked on the host, see _check_inputs).
    Returns (B, 1, 64, 64) of ``dtype`` (float32, float64, float16 or bfloat16), contiguous.
    """
    _check_inputs(packed, index, dtype)
    check_choice("backend", backend, ("auto",) + BACKEND_NAMES)
    if torch.compiler.is_compiling():
        return _gather_images_op(packed, index, dtype, backend)
    if _functorch_active():  # vmap: batched tensors have no data pointer
        return _under_functorch(packed, index, dtype, backend)
    return select("gather_images", backend, packed.device, dtype).gather_images_forward(packed, index, dtype)


def _under_functorch(packed: Tensor, index: Tensor, dtype: torch.dtype, backend: str) -> Tensor:
    """Under torch.func transforms (vmap, ...) the reference's torch ops run: batched tensors have
    no data pointer for a kernel to read (as the other ops, fastfvae/ops/_register.py)."""
    requested = requested_from_environment() if backend == "auto" else backend
    if requested not in ("auto", "reference"):
        raise ValueError(
            f"backend: torch.func transforms (vmap, grad, jacrev, ...) run gather_images with the reference "
            f"backend only; got backend={requested!r} (pass backend='auto' or 'reference', and leave "
            f"{ENVIRONMENT_VARIABLE} unset or 'reference'; backends: {BACKEND_NAMES})"
        )
    return get_backend("reference").gather_images_forward(packed, index, dtype)
