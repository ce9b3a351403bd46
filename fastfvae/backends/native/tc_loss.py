"""The native tc_loss: the total-correlation estimate from discriminator logits (kernels/cpu/tc_loss.cpp,
kernels/cuda/tc_loss.cu).
"""
from __future__ import annotations

from fastfvae.backends.native.library import (
    DTYPE_CODES, _call, declare_entry_points, dtype_code, i64, ptr, strided2, _workspace, _workspace_args,
)

declare_entry_points("tc_loss", {
    "ffv_tc_loss_forward": (
        dtype_code, i64, i64, *strided2, ptr, ptr, i64, ptr,  # dtype B K logits tc workspace(bytes) stream
    ),
    "ffv_tc_loss_workspace_bytes": (dtype_code, i64, i64, ptr),  # dtype B K bytes*
    "ffv_tc_loss_backward": (dtype_code, i64, i64, ptr, ptr, ptr),  # dtype B K grad_tc grad stream
})


def tc_loss_forward(logits):
    batch, k = logits.shape
    tc = logits.new_empty(())
    s = logits.stride()
    workspace = _workspace("tc_loss", logits, DTYPE_CODES[logits.dtype], batch, k)
    _call("ffv_tc_loss_forward", logits, DTYPE_CODES[logits.dtype], batch, k,
          logits.data_ptr(), s[0], s[1], tc.data_ptr(), *_workspace_args(workspace))
    return tc


def tc_loss_backward(grad_tc, logits):
    batch, k = logits.shape
    grad = logits.new_empty(batch, k)
    _call("ffv_tc_loss_backward", logits, DTYPE_CODES[logits.dtype], batch, k,
          grad_tc.data_ptr(), grad.data_ptr())
    return grad
