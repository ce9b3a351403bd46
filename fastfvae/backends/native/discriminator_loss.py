"""The native discriminator_loss: the discriminator's cross-entropy on both halves
(kernels/cpu/discriminator_loss.cpp, kernels/cuda/discriminator_loss.cu).
"""
from __future__ import annotations

from fastfvae.backends.native.library import (
    DTYPE_CODES, _call, declare_entry_points, dtype_code, i64, ptr, strided2, _workspace, _workspace_args,
)

declare_entry_points("discriminator_loss", {
    "ffv_discriminator_loss_forward": (
        dtype_code, i64, i64, *strided2, *strided2, ptr,  # dtype B K d_real d_perm loss
        ptr, i64, ptr,  # workspace workspace_bytes stream
    ),
    "ffv_discriminator_loss_workspace_bytes": (dtype_code, i64, i64, ptr),  # dtype B K bytes*
    "ffv_discriminator_loss_backward": (
        dtype_code, i64, i64, ptr, *strided2, *strided2,  # dtype B K grad_loss d_real d_perm
        ptr, ptr, ptr,  # grad_real grad_perm stream
    ),
})


def discriminator_loss_forward(d_real, d_perm):
    batch, k = d_real.shape
    loss = d_real.new_empty(())
    r, p = d_real.stride(), d_perm.stride()
    workspace = _workspace("discriminator_loss", d_real, DTYPE_CODES[d_real.dtype], batch, k)
    _call("ffv_discriminator_loss_forward", d_real, DTYPE_CODES[d_real.dtype], batch, k,
          d_real.data_ptr(), r[0], r[1], d_perm.data_ptr(), p[0], p[1], loss.data_ptr(),
          *_workspace_args(workspace))
    return loss


def discriminator_loss_backward(grad_loss, d_real, d_perm):
    batch, k = d_real.shape
    grad_real, grad_perm = d_real.new_empty(batch, k), d_perm.new_empty(batch, k)
    r, p = d_real.stride(), d_perm.stride()
    _call("ffv_discriminator_loss_backward", d_real, DTYPE_CODES[d_real.dtype], batch, k,
          grad_loss.data_ptr(), d_real.data_ptr(), r[0], r[1], d_perm.data_ptr(), p[0], p[1],
          grad_real.data_ptr(), grad_perm.data_ptr())
    return grad_real, grad_perm
