"""Triton kernels for the FactorVAE discriminator's loss (DESIGN.md §1).

Both logit tensors (B, K) at once, with PyTorch's own formulas so that NaN and +-inf logits give
exactly the reference's NaN / inf results (tests/test_discriminator_loss.py checks every pair):
- K = 2: CE(x, label) = -log_softmax(x)[label] = (m - x_label) + log(exp(x0 - m) + exp(x1 - m)),
  m = max(x0, x1); loss = 0.5/B * sum_i (CE(real_i, 0) + CE(perm_i, 1)).
- K = 1 (the logit of "from q(z)"): BCE-with-logits(x, y) = (1 - y)*x - log_sigmoid(x), with
  log_sigmoid(x) = min(x, 0) - log(1 + exp(-|x|)); loss = 0.5/B * sum_i (BCE(r_i, 1) + BCE(p_i, 0)).
  (0*x is kept: it is NaN for infinite x, as in PyTorch.)

Gradients, s = g * 0.5/B: K = 2: d real = s*(softmax(real) - e0), d perm = s*(softmax(perm) - e1);
K = 1: d r = s*(sigmoid(r) - 1), d p = s*sigmoid(p).

Launches: forward 1 up to _common.ROWS_PER_PROGRAM rows (one program loops over the batch), 2
beyond (a grid of partial sums, then one program adds them in index order): fixed order,
deterministic; backward 1 (writes both gradients).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastfvae.backends.triton import _common
from fastfvae.backends.triton._common import accumulator_torch_dtype, compute_dtype, device_guard, next_pow2

BLOCK = 1024


@triton.jit
def _larger(x0, x1):
    """x0 > x1 ? x0 : x1, as the reference's max (NaN in x0 picks x1; the result then turns NaN)."""
    return tl.where(x0 > x1, x0, x1)


@triton.jit
def _cross_entropy2(x0, x1, LABEL: tl.constexpr):
    """-log_softmax((x0, x1))[LABEL], max subtracted."""
    m = _larger(x0, x1)
    log_sum = tl.log(tl.exp(x0 - m) + tl.exp(x1 - m))
    if LABEL == 0:
        picked = x0
    else:
        picked = x1
    return (m - picked) + log_sum


@triton.jit
def _softmax2(x0, x1):
    """softmax((x0, x1)), max subtracted: (q0, q1)."""
    m = _larger(x0, x1)
    e0 = tl.exp(x0 - m)
    e1 = tl.exp(x1 - m)
    total = e0 + e1
    return e0 / total, e1 / total


@triton.jit
def _log_sigmoid(x):
    """min(x, 0) - log(1 + exp(-|x|)) (no overflow)."""
    return tl.where(x < 0.0, x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _sigmoid(x):
    """1 / (1 + exp(-x)) via exp(-|x|), so no exp overflows."""
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _load_rows(real_ptr, perm_ptr, rows, ok, stride_rb, stride_rk, stride_pb, stride_pk,
               K: tl.constexpr, COMPUTE: tl.constexpr):
    """(r0, r1, p0, p1): the logits of `rows` in the compute dtype; r1 = p1 = 0 when K = 1."""
    r0 = tl.load(real_ptr + rows * stride_rb, mask=ok, other=0.0).to(COMPUTE)
    p0 = tl.load(perm_ptr + rows * stride_pb, mask=ok, other=0.0).to(COMPUTE)
    if K == 2:
        r1 = tl.load(real_ptr + rows * stride_rb + stride_rk, mask=ok, other=0.0).to(COMPUTE)
        p1 = tl.load(perm_ptr + rows * stride_pb + stride_pk, mask=ok, other=0.0).to(COMPUTE)
    else:
        r1 = tl.zeros_like(r0)
        p1 = tl.zeros_like(p0)
    return r0, r1, p0, p1


@triton.jit
def _discriminator_loss_forward_kernel(
    real_ptr,  # (B, K) input dtype, strided: logits on z ~ q(z)
    perm_ptr,  # (B, K) input dtype, strided: logits on permute_dims(z')
    out_ptr,  # PARTIAL: (programs,) compute dtype, partial sums; else () input dtype, the loss
    B,
    rows_per_program,  # rows each program adds (B when one program does it all)
    stride_rb,
    stride_rk,
    stride_pb,
    stride_pk,
    K: tl.constexpr,
    PARTIAL: tl.constexpr,  # write program p's sum of row losses to out[p] (no 0.5/B)
    COMPUTE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """loss = 0.5/B * sum_i (CE(real_i, 0) + CE(perm_i, 1)) (K = 2) or the BCE pair (K = 1);
    program p adds rows [p*rows_per_program, (p+1)*rows_per_program) in a fixed order."""
    first = tl.program_id(0) * rows_per_program
    acc = tl.zeros((BLOCK,), dtype=COMPUTE)
    for start in range(0, rows_per_program, BLOCK):
        lane = start + tl.arange(0, BLOCK)
        rows = (first + lane).to(tl.int64)
        ok = (rows < B) & (lane < rows_per_program)
        r0, r1, p0, p1 = _load_rows(real_ptr, perm_ptr, rows, ok, stride_rb, stride_rk, stride_pb, stride_pk,
                                    K, COMPUTE)
        if K == 2:
            row_loss = _cross_entropy2(r0, r1, 0) + _cross_entropy2(p0, p1, 1)
        else:
            row_loss = (0.0 * r0 - _log_sigmoid(r0)) + (p0 - _log_sigmoid(p0))
        acc += tl.where(ok, row_loss, 0.0)
    if PARTIAL:
        tl.store(out_ptr + tl.program_id(0), tl.sum(acc, axis=0))
    else:
        loss = 0.5 * (tl.sum(acc, axis=0) / B)
        tl.store(out_ptr, loss.to(out_ptr.dtype.element_ty))


@triton.jit
def _discriminator_loss_backward_kernel(
    grad_loss_ptr,  # () input dtype: dL/dloss
    real_ptr,  # (B, K) input dtype, strided: logits on z ~ q(z)
    perm_ptr,  # (B, K) input dtype, strided: logits on permute_dims(z')
    grad_real_ptr,  # (B, K) input dtype, contiguous: output dL/dreal
    grad_perm_ptr,  # (B, K) input dtype, contiguous: output dL/dperm
    B,
    stride_rb,
    stride_rk,
    stride_pb,
    stride_pk,
    K: tl.constexpr,
    COMPUTE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """s = g * 0.5/B; K = 2: d real = s*(softmax(real) - e0), d perm = s*(softmax(perm) - e1);
    K = 1: d r = s*(sigmoid(r) - 1), d p = s*sigmoid(p)."""
    rows = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    ok = rows < B
    scale = tl.load(grad_loss_ptr).to(COMPUTE) * 0.5 / B
    out_ty = grad_real_ptr.dtype.element_ty
    r0, r1, p0, p1 = _load_rows(real_ptr, perm_ptr, rows, ok, stride_rb, stride_rk, stride_pb, stride_pk, K, COMPUTE)
    if K == 2:
        q0, q1 = _softmax2(r0, r1)
        tl.store(grad_real_ptr + rows * 2, ((q0 - 1.0) * scale).to(out_ty), mask=ok)
        tl.store(grad_real_ptr + rows * 2 + 1, (q1 * scale).to(out_ty), mask=ok)
        q0, q1 = _softmax2(p0, p1)
        tl.store(grad_perm_ptr + rows * 2, (q0 * scale).to(out_ty), mask=ok)
        tl.store(grad_perm_ptr + rows * 2 + 1, ((q1 - 1.0) * scale).to(out_ty), mask=ok)
    else:
        tl.store(grad_real_ptr + rows, ((_sigmoid(r0) - 1.0) * scale).to(out_ty), mask=ok)
        tl.store(grad_perm_ptr + rows, (_sigmoid(p0) * scale).to(out_ty), mask=ok)


def _strides(d_real, d_perm):
    return d_real.stride(0), d_real.stride(1), d_perm.stride(0), d_perm.stride(1)


def discriminator_loss_forward(d_real, d_perm):
    """d_real, d_perm: (B, K), K in {1, 2}. Returns the scalar loss in their dtype."""
    batch, k = d_real.shape
    loss = torch.empty((), dtype=d_real.dtype, device=d_real.device)
    per_program = min(batch, _common.ROWS_PER_PROGRAM)
    programs = triton.cdiv(batch, per_program)
    partial = programs > 1
    out = torch.empty((programs,), dtype=accumulator_torch_dtype(d_real.dtype), device=d_real.device) if partial else loss
    with device_guard(d_real):
        _discriminator_loss_forward_kernel[(programs,)](
            d_real, d_perm, out, batch, per_program, *_strides(d_real, d_perm),
            K=k, PARTIAL=partial, COMPUTE=compute_dtype(d_real.dtype), BLOCK=min(BLOCK, next_pow2(per_program)),
        )
        if partial:
            _common.sum_into(out, loss, 2 * batch)  # 0.5/B of the sum
    return loss


def discriminator_loss_backward(grad_loss, d_real, d_perm):
    """grad_loss: (); d_real, d_perm: (B, K). Returns (grad_real, grad_perm), (B, K) contiguous."""
    batch, k = d_real.shape
    grad_real = torch.empty((batch, k), dtype=d_real.dtype, device=d_real.device)
    grad_perm = torch.empty((batch, k), dtype=d_perm.dtype, device=d_perm.device)
    block = min(BLOCK, triton.next_power_of_2(batch))
    with device_guard(d_real):
        _discriminator_loss_backward_kernel[(triton.cdiv(batch, block),)](
            grad_loss, d_real, d_perm, grad_real, grad_perm, batch, *_strides(d_real, d_perm),
            K=k, COMPUTE=compute_dtype(d_real.dtype), BLOCK=block,
        )
    return grad_real, grad_perm
