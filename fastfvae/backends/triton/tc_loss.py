"""Triton kernels for the VAE's total-correlation term (DESIGN.md §1).

logits (B, K): K = 2 -> tc = mean_i (l_i0 - l_i1) (density-ratio trick, class 0 = "from q(z)");
K = 1 -> tc = mean_i l_i.

Launches: forward 1 up to _common.ROWS_PER_PROGRAM rows (one program loops over the batch in
BLOCK rows), 2 beyond (a grid of partial sums, then one program adds them in index order): a
fixed summation order either way, so the result is deterministic; backward 1 (grad[i, 0] = g/B,
grad[i, 1] = -g/B).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastfvae.backends.triton import _common
from fastfvae.backends.triton._common import accumulator_torch_dtype, compute_dtype, device_guard, next_pow2

BLOCK = 1024


@triton.jit
def _tc_loss_forward_kernel(
    logits_ptr,  # (B, K) input dtype, strided: discriminator logits on z ~ q(z)
    out_ptr,  # PARTIAL: (programs,) compute dtype, partial sums; else () input dtype, the TC estimate
    B,
    rows_per_program,  # rows each program adds (B when one program does it all)
    stride_b,
    stride_k,
    K: tl.constexpr,  # 1 or 2 logits per sample
    PARTIAL: tl.constexpr,  # write program p's sum of (l_i0 - l_i1) to out[p] (no 1/B)
    COMPUTE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """tc = (1/B) * sum_i (l_i0 - l_i1) for K = 2, (1/B) * sum_i l_i0 for K = 1; program p adds
    rows [p*rows_per_program, (p+1)*rows_per_program) in a fixed order."""
    first = tl.program_id(0) * rows_per_program
    acc = tl.zeros((BLOCK,), dtype=COMPUTE)
    for start in range(0, rows_per_program, BLOCK):
        lane = start + tl.arange(0, BLOCK)
        rows = (first + lane).to(tl.int64)
        ok = (rows < B) & (lane < rows_per_program)
        value = tl.load(logits_ptr + rows * stride_b, mask=ok, other=0.0).to(COMPUTE)
        if K == 2:
            value -= tl.load(logits_ptr + rows * stride_b + stride_k, mask=ok, other=0.0).to(COMPUTE)
        acc += value
    if PARTIAL:
        tl.store(out_ptr + tl.program_id(0), tl.sum(acc, axis=0))
    else:
        tc = tl.sum(acc, axis=0) / B
        tl.store(out_ptr, tc.to(out_ptr.dtype.element_ty))


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
    per_program = min(batch, _common.ROWS_PER_PROGRAM)
    programs = triton.cdiv(batch, per_program)
    partial = programs > 1
    out = torch.empty((programs,), dtype=accumulator_torch_dtype(logits.dtype), device=logits.device) if partial else tc
    with device_guard(logits):
        _tc_loss_forward_kernel[(programs,)](
            logits, out, batch, per_program, logits.stride(0), logits.stride(1),
            K=k, PARTIAL=partial, COMPUTE=compute_dtype(logits.dtype), BLOCK=min(BLOCK, next_pow2(per_program)),
        )
        if partial:
            _common.sum_into(out, tc, batch)
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
