"""Triton kernels for the VAE's total-correlation term (DESIGN.md §1).

logits (B, K): K = 2 -> tc = mean_i (l_i0 - l_i1) (density-ratio trick, class 0 = "from q(z)");
K = 1 -> tc = mean_i l_i.

Launches: forward 1 (one program loops over the batch in BLOCK rows, a fixed summation order,
so the result is deterministic); backward 1 (grad[i, 0] = g/B, grad[i, 1] = -g/B).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastfvae.backends.triton._common import compute_dtype, device_guard

BLOCK = 1024


@triton.jit
def _tc_loss_forward_kernel(
    logits_ptr,  # (B, K) input dtype, strided: discriminator logits on z ~ q(z)
    tc_ptr,  # () input dtype: output, the TC estimate
    B,
    stride_b,
    stride_k,
    K: tl.constexpr,  # 1 or 2 logits per sample
    COMPUTE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """tc = (1/B) * sum_i (l_i0 - l_i1) for K = 2, (1/B) * sum_i l_i0 for K = 1. One program."""
    acc = tl.zeros((BLOCK,), dtype=COMPUTE)
    for start in range(0, B, BLOCK):
        rows = (start + tl.arange(0, BLOCK)).to(tl.int64)
        ok = rows < B
        value = tl.load(logits_ptr + rows * stride_b, mask=ok, other=0.0).to(COMPUTE)
        if K == 2:
            value -= tl.load(logits_ptr + rows * stride_b + stride_k, mask=ok, other=0.0).to(COMPUTE)
        acc += value
    tc = tl.sum(acc, axis=0) / B
    tl.store(tc_ptr, tc.to(tc_ptr.dtype.element_ty))


@triton.jit
def _tc_loss_backward_kernel(
    grad_tc_ptr,  # () input dtype: dL/dtc
    grad_ptr,  # (B, K) input dtype, contiguous: output dL/dlogits
    B,
    K: tl.constexpr,
    COMPUTE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """grad[i, 0] = g / B; grad[i, 1] = -g / B (K = 2)."""
    rows = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    ok = rows < B
    share = tl.load(grad_tc_ptr).to(COMPUTE) / B
    column = tl.zeros((BLOCK,), dtype=COMPUTE) + share
    tl.store(grad_ptr + rows * K, column.to(grad_ptr.dtype.element_ty), mask=ok)
    if K == 2:
        tl.store(grad_ptr + rows * K + 1, (-column).to(grad_ptr.dtype.element_ty), mask=ok)


def tc_loss_forward(logits):
    """logits: (B, K), K in {1, 2}. Returns the scalar tc in logits' dtype."""
    batch, k = logits.shape
    tc = torch.empty((), dtype=logits.dtype, device=logits.device)
    with device_guard(logits):
        _tc_loss_forward_kernel[(1,)](
            logits, tc, batch, logits.stride(0), logits.stride(1),
            K=k, COMPUTE=compute_dtype(logits.dtype), BLOCK=min(BLOCK, triton.next_power_of_2(batch)),
        )
    return tc


def tc_loss_backward(grad_tc, logits):
    """grad_tc: (); logits: (B, K). Returns dL/dlogits (B, K), contiguous."""
    batch, k = logits.shape
    grad = torch.empty((batch, k), dtype=logits.dtype, device=logits.device)
    block = min(BLOCK, triton.next_power_of_2(batch))
    with device_guard(logits):
        _tc_loss_backward_kernel[(triton.cdiv(batch, block),)](
            grad_tc, grad, batch, K=k, COMPUTE=compute_dtype(logits.dtype), BLOCK=block,
        )
    return grad
