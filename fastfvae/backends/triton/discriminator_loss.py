"""Triton kernels for the FactorVAE discriminator's loss (DESIGN.md §1).

Both logit tensors (B, K) at once. With softplus(x) = log(1 + exp(x)):
- K = 2: CE(real, class 0) = softplus(r1 - r0), CE(perm, class 1) = softplus(p0 - p1);
- K = 1 (the logit of "from q(z)"): BCE(sigmoid(r), 1) = softplus(-r), BCE(sigmoid(p), 0) = softplus(p).
loss = 0.5/B * sum_i (softplus(a_i) + softplus(b_i)), with a = r1 - r0 or -r and b = p0 - p1 or p.
softplus is evaluated stably as max(x, 0) + log(1 + exp(-|x|)) (no overflow for any logit).

Gradients: d softplus(x)/dx = sigmoid(x), so with s = g * 0.5/B:
K = 2: d r0 = -s*sigmoid(a), d r1 = s*sigmoid(a), d p0 = s*sigmoid(b), d p1 = -s*sigmoid(b)
(softmax minus one-hot); K = 1: d r = -s*sigmoid(a) = s*(sigmoid(r) - 1), d p = s*sigmoid(p).

Launches: forward 1 (one program loops over the batch, fixed order, deterministic);
backward 1 (writes both gradients).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastfvae.backends.triton._common import compute_dtype, device_guard

BLOCK = 1024


@triton.jit
def _softplus(x):
    """log(1 + exp(x)) without overflow."""
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _sigmoid(x):
    """1 / (1 + exp(-x)) via exp(-|x|), so no exp overflows."""
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _margins(real_ptr, perm_ptr, rows, ok, stride_rb, stride_rk, stride_pb, stride_pk,
             K: tl.constexpr, COMPUTE: tl.constexpr):
    """(a, b): the arguments of softplus for the real and the permuted sample of each row."""
    r0 = tl.load(real_ptr + rows * stride_rb, mask=ok, other=0.0).to(COMPUTE)
    p0 = tl.load(perm_ptr + rows * stride_pb, mask=ok, other=0.0).to(COMPUTE)
    if K == 2:
        r1 = tl.load(real_ptr + rows * stride_rb + stride_rk, mask=ok, other=0.0).to(COMPUTE)
        p1 = tl.load(perm_ptr + rows * stride_pb + stride_pk, mask=ok, other=0.0).to(COMPUTE)
        return r1 - r0, p0 - p1
    return -r0, p0


@triton.jit
def _discriminator_loss_forward_kernel(
    real_ptr,  # (B, K) input dtype, strided: logits on z ~ q(z)
    perm_ptr,  # (B, K) input dtype, strided: logits on permute_dims(z')
    loss_ptr,  # () input dtype: output loss
    B,
    stride_rb,
    stride_rk,
    stride_pb,
    stride_pk,
    K: tl.constexpr,
    COMPUTE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """loss = 0.5/B * sum_i (softplus(a_i) + softplus(b_i)), a, b from _margins. One program."""
    acc = tl.zeros((BLOCK,), dtype=COMPUTE)
    for start in range(0, B, BLOCK):
        rows = (start + tl.arange(0, BLOCK)).to(tl.int64)
        ok = rows < B
        a, b = _margins(real_ptr, perm_ptr, rows, ok, stride_rb, stride_rk, stride_pb, stride_pk, K, COMPUTE)
        acc += tl.where(ok, _softplus(a) + _softplus(b), 0.0)
    loss = 0.5 * (tl.sum(acc, axis=0) / B)
    tl.store(loss_ptr, loss.to(loss_ptr.dtype.element_ty))


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
    """s = g * 0.5/B; K = 2: dr = s*(-sig(a), sig(a)), dp = s*(sig(b), -sig(b));
    K = 1: dr = -s*sig(a), dp = s*sig(b)."""
    rows = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    ok = rows < B
    scale = tl.load(grad_loss_ptr).to(COMPUTE) * 0.5 / B
    a, b = _margins(real_ptr, perm_ptr, rows, ok, stride_rb, stride_rk, stride_pb, stride_pk, K, COMPUTE)
    grad_a = scale * _sigmoid(a)
    grad_b = scale * _sigmoid(b)
    out_ty = grad_real_ptr.dtype.element_ty
    tl.store(grad_real_ptr + rows * K, (-grad_a).to(out_ty), mask=ok)
    tl.store(grad_perm_ptr + rows * K, grad_b.to(out_ty), mask=ok)
    if K == 2:
        tl.store(grad_real_ptr + rows * K + 1, grad_a.to(out_ty), mask=ok)
        tl.store(grad_perm_ptr + rows * K + 1, (-grad_b).to(out_ty), mask=ok)


def _strides(d_real, d_perm):
    return d_real.stride(0), d_real.stride(1), d_perm.stride(0), d_perm.stride(1)


def discriminator_loss_forward(d_real, d_perm):
    """d_real, d_perm: (B, K), K in {1, 2}. Returns the scalar loss in their dtype."""
    batch, k = d_real.shape
    loss = torch.empty((), dtype=d_real.dtype, device=d_real.device)
    with device_guard(d_real):
        _discriminator_loss_forward_kernel[(1,)](
            d_real, d_perm, loss, batch, *_strides(d_real, d_perm),
            K=k, COMPUTE=compute_dtype(d_real.dtype), BLOCK=min(BLOCK, triton.next_power_of_2(batch)),
        )
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
