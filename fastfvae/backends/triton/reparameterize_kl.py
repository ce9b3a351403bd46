"""Triton kernels for the fused reparameterised sample + Gaussian KL (DESIGN.md §1, §8).

Forward, one pass over (B, D): z = mu + exp(logvar/2) * eps and kl_i = 0.5 * sum_d (mu^2 +
exp(logvar) - logvar - 1), eps given or drawn in the kernel as tl.randn(seed, i*D + d).
Backward, one pass from grad_z, grad_kl, mu, logvar and eps: the given eps, or the forward's
draw regenerated as tl.randn(seed, i*D + d) from the same seed (Philox is counter-based, so
eps is never stored; flash-attention replays its dropout mask the same way). std * eps is not
rebuilt as z - mu: z is rounded to its dtype, and inf - inf is NaN.

Launches:
- forward, reduction "none": 1 (per-row KL written in the output dtype);
- forward, "mean"/"sum", B*D <= REDUCE_IN_KERNEL_MAX_ELEMENTS: 1 (a single program loops over
  the whole batch and writes the reduced scalar);
- forward, "mean"/"sum", larger: 2 or 3 (many programs write per-row KL in the compute dtype,
  then _common.sum_into adds that vector: one program, or beyond ROWS_PER_PROGRAM rows a grid of
  partial sums and one program over them). Every reduction is deterministic: no float atomics,
  and the summation order depends only on B and D.
- backward: 1.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastfvae.backends.triton._common import (
    GRID_LIMITS, accumulator_torch_dtype, checked_grid, compute_dtype, device_guard, next_pow2, sum_into,
)

# Up to this many elements, a mean/sum forward runs as ONE program that also reduces the batch
# (one launch). FactorVAE batches (B = 64..512, D = 10) are well below it; above it, spreading
# the Philox work over many programs and reducing in a second tiny launch is faster.
REDUCE_IN_KERNEL_MAX_ELEMENTS = 8192
# Elements per (rows x columns) tile of one loop iteration.
TILE_ELEMENTS = 1024
MAX_BLOCK_D = 64


@triton.jit
def _reparameterize_kl_forward_kernel(
    mu_ptr,  # (B, D) input dtype, strided: posterior means
    logvar_ptr,  # (B, D) input dtype, strided: posterior log-variances
    eps_ptr,  # (B, D) input dtype, strided: given noise; unused (any pointer) when not HAS_EPS
    seed_ptr,  # (1,) int64: Philox seed, read on the device (no host sync, CUDA-graph safe)
    z_ptr,  # (B, D) input dtype, contiguous: output sample
    kl_ptr,  # REDUCE: () output dtype, the reduced KL; else (B,) per-row KL (any float dtype)
    B,
    D,
    stride_mu_b,
    stride_mu_d,
    stride_lv_b,
    stride_lv_d,
    stride_eps_b,
    stride_eps_d,
    kl_divisor,  # B for "mean", 1 for "sum" (used when REDUCE)
    blocks_per_program,  # row blocks each program covers: cdiv(B, BLOCK_B) when REDUCE, else 1
    HAS_EPS: tl.constexpr,
    REDUCE: tl.constexpr,
    COMPUTE: tl.constexpr,  # tl.float32 or tl.float64
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """z[i, d] = mu + exp(logvar / 2) * eps,  eps = given or tl.randn(seed, i*D + d);
    kl_i = 0.5 * sum_d (mu^2 + exp(logvar) - logvar - 1);
    REDUCE: kl = (sum_i kl_i) / kl_divisor, else kl[i] = kl_i.

    Program p covers row blocks p*blocks_per_program ... (REDUCE launches one program, which
    covers the whole batch); each row block loops over D in BLOCK_D chunks.
    """
    first_block = tl.program_id(0) * blocks_per_program
    seed = tl.load(seed_ptr)
    batch_total = tl.zeros((BLOCK_B,), dtype=COMPUTE)
    for block in range(0, blocks_per_program):
        rows = ((first_block + block) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
        row_ok = rows < B
        kl_row = tl.zeros((BLOCK_B,), dtype=COMPUTE)
        for col_start in range(0, D, BLOCK_D):
            cols = (col_start + tl.arange(0, BLOCK_D)).to(tl.int64)
            mask = row_ok[:, None] & (cols < D)[None, :]
            mu = tl.load(mu_ptr + rows[:, None] * stride_mu_b + cols[None, :] * stride_mu_d, mask=mask, other=0.0)
            lv = tl.load(logvar_ptr + rows[:, None] * stride_lv_b + cols[None, :] * stride_lv_d, mask=mask, other=0.0)
            mu = mu.to(COMPUTE)
            lv = lv.to(COMPUTE)
            if HAS_EPS:
                eps = tl.load(
                    eps_ptr + rows[:, None] * stride_eps_b + cols[None, :] * stride_eps_d, mask=mask, other=0.0
                ).to(COMPUTE)
            else:
                # Global element index as the Philox counter: same numbers for any block size.
                eps = tl.randn(seed, rows[:, None] * D + cols[None, :]).to(COMPUTE)
            z = mu + tl.exp(0.5 * lv) * eps
            tl.store(z_ptr + rows[:, None] * D + cols[None, :], z.to(z_ptr.dtype.element_ty), mask=mask)
            term = mu * mu + tl.exp(lv) - lv - 1.0
            kl_row += tl.sum(tl.where(mask, term, 0.0), axis=1)
        kl_row = 0.5 * kl_row
        if REDUCE:
            batch_total += kl_row  # rows past B contributed exactly 0
        else:
            tl.store(kl_ptr + rows, kl_row.to(kl_ptr.dtype.element_ty), mask=row_ok)
    if REDUCE:
        # int -> COMPUTE by promotion (no .to(): an int argument equal to 1 may be a constexpr)
        total = tl.sum(batch_total, axis=0) / kl_divisor
        tl.store(kl_ptr, total.to(kl_ptr.dtype.element_ty))


@triton.jit
def _reparameterize_kl_backward_kernel(
    grad_z_ptr,  # (B, D) input dtype, strided (may be stride-0 expanded): dL/dz
    grad_kl_ptr,  # () or (B,) input dtype, strided: dL/dkl (scalar for mean/sum, per row for none)
    mu_ptr,  # (B, D) input dtype, strided: posterior means
    logvar_ptr,  # (B, D) input dtype, strided: posterior log-variances
    eps_ptr,  # (B, D) input dtype, strided: given noise; unused (any pointer) when not HAS_EPS
    seed_ptr,  # (1,) int64: the forward's Philox seed (read when not HAS_EPS)
    grad_mu_ptr,  # (B, D) input dtype, contiguous: output dL/dmu
    grad_logvar_ptr,  # (B, D) input dtype, contiguous: output dL/dlogvar
    grad_eps_ptr,  # (B, D) input dtype, contiguous: output dL/deps (written when NEED_EPS)
    B,
    D,
    stride_gz_b,
    stride_gz_d,
    stride_gkl,  # 0 for a scalar grad_kl (mean/sum), its stride for "none"
    stride_mu_b,
    stride_mu_d,
    stride_lv_b,
    stride_lv_d,
    stride_eps_b,
    stride_eps_d,
    gkl_divisor,  # B for "mean", 1 for "sum" and "none"
    HAS_EPS: tl.constexpr,
    NEED_EPS: tl.constexpr,
    COMPUTE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """With gkl_i = grad_kl[i or 0] / gkl_divisor:
    dmu = gz + gkl_i * mu;  dlogvar = 0.5 * gz * exp(logvar / 2) * eps + 0.5 * gkl_i * (exp(logvar) - 1);
    deps = gz * exp(logvar / 2), eps = given or tl.randn(seed, i*D + d) (the forward's draw).
    One (BLOCK_B, BLOCK_D) tile per program."""
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cols = (tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
    row_ok = rows < B
    mask = row_ok[:, None] & (cols < D)[None, :]
    r = rows[:, None]
    c = cols[None, :]
    gz = tl.load(grad_z_ptr + r * stride_gz_b + c * stride_gz_d, mask=mask, other=0.0).to(COMPUTE)
    mu = tl.load(mu_ptr + r * stride_mu_b + c * stride_mu_d, mask=mask, other=0.0).to(COMPUTE)
    lv = tl.load(logvar_ptr + r * stride_lv_b + c * stride_lv_d, mask=mask, other=0.0).to(COMPUTE)
    if HAS_EPS:
        eps = tl.load(eps_ptr + r * stride_eps_b + c * stride_eps_d, mask=mask, other=0.0).to(COMPUTE)
    else:
        eps = tl.randn(tl.load(seed_ptr), r * D + c).to(COMPUTE)  # the forward's counters
    gkl = tl.load(grad_kl_ptr + rows * stride_gkl, mask=row_ok, other=0.0).to(COMPUTE)
    gkl = (gkl / gkl_divisor)[:, None]
    std = tl.exp(0.5 * lv)
    grad_mu = gz + gkl * mu
    grad_lv = 0.5 * gz * std * eps + 0.5 * gkl * (tl.exp(lv) - 1.0)
    out = r * D + c
    tl.store(grad_mu_ptr + out, grad_mu.to(grad_mu_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_logvar_ptr + out, grad_lv.to(grad_logvar_ptr.dtype.element_ty), mask=mask)
    if NEED_EPS:
        grad_eps = gz * std
        tl.store(grad_eps_ptr + out, grad_eps.to(grad_eps_ptr.dtype.element_ty), mask=mask)


def _tile(batch: int, dim: int) -> tuple[int, int]:
    """(BLOCK_B, BLOCK_D): BLOCK_D covers D up to MAX_BLOCK_D, BLOCK_B fills TILE_ELEMENTS."""
    block_d = min(next_pow2(dim), MAX_BLOCK_D)
    block_b = max(1, min(next_pow2(batch), TILE_ELEMENTS // block_d))
    return block_b, block_d


def reparameterize_kl_forward(mu, logvar, eps, seed, reduction):
    """mu, logvar, eps (or None): (B, D); seed: int64 (1,). Returns z (B, D) and kl, () or (B,)."""
    batch, dim = mu.shape
    block_b, block_d = _tile(batch, dim)
    z = torch.empty((batch, dim), dtype=mu.dtype, device=mu.device)
    has_eps = eps is not None
    eps_arg = eps if has_eps else mu
    reduce_in_kernel = reduction != "none" and batch * dim <= REDUCE_IN_KERNEL_MAX_ELEMENTS
    divisor = batch if reduction == "mean" else 1
    if reduction == "none":
        kl = torch.empty((batch,), dtype=mu.dtype, device=mu.device)
        kl_target = kl
    elif reduce_in_kernel:
        kl = torch.empty((), dtype=mu.dtype, device=mu.device)
        kl_target = kl
    else:
        kl = torch.empty((), dtype=mu.dtype, device=mu.device)
        kl_target = torch.empty((batch,), dtype=accumulator_torch_dtype(mu.dtype), device=mu.device)
    grid = (1,) if reduce_in_kernel else (triton.cdiv(batch, block_b),)
    with device_guard(mu):
        _reparameterize_kl_forward_kernel[grid](
            mu, logvar, eps_arg, seed, z, kl_target,
            batch, dim,
            mu.stride(0), mu.stride(1), logvar.stride(0), logvar.stride(1),
            eps_arg.stride(0), eps_arg.stride(1),
            divisor, triton.cdiv(batch, block_b) if reduce_in_kernel else 1,
            HAS_EPS=has_eps, REDUCE=reduce_in_kernel, COMPUTE=compute_dtype(mu.dtype),
            BLOCK_B=block_b, BLOCK_D=block_d,
        )
        if reduction != "none" and not reduce_in_kernel:
            sum_into(kl_target, kl, divisor)  # deterministic, two-stage beyond ROWS_PER_PROGRAM rows
    return z, kl


def reparameterize_kl_backward(grad_z, grad_kl, mu, logvar, eps, seed, reduction, need_grad_eps):
    """eps: the forward's given (B, D) noise, or None: regenerated from seed (int64 (1,)).
    Returns (grad_mu, grad_logvar, grad_eps or None), all (B, D) contiguous, one launch."""
    batch, dim = mu.shape
    block_b, block_d = _tile(batch, dim)
    grad_mu = torch.empty((batch, dim), dtype=mu.dtype, device=mu.device)
    grad_logvar = torch.empty_like(grad_mu)
    grad_eps = torch.empty_like(grad_mu) if need_grad_eps else None
    stride_gkl = grad_kl.stride(0) if reduction == "none" else 0
    divisor = batch if reduction == "mean" else 1
    has_eps = eps is not None
    eps_arg = eps if has_eps else mu
    grid = checked_grid((triton.cdiv(batch, block_b), triton.cdiv(dim, block_d)), "reparameterize_kl backward")
    with device_guard(mu):
        _reparameterize_kl_backward_kernel[grid](
            grad_z, grad_kl, mu, logvar, eps_arg, seed if seed is not None else mu,
            grad_mu, grad_logvar, grad_eps if need_grad_eps else grad_mu,
            batch, dim,
            grad_z.stride(0), grad_z.stride(1), stride_gkl,
            mu.stride(0), mu.stride(1), logvar.stride(0), logvar.stride(1),
            eps_arg.stride(0), eps_arg.stride(1),
            divisor,
            HAS_EPS=has_eps, NEED_EPS=need_grad_eps, COMPUTE=compute_dtype(mu.dtype),
            BLOCK_B=block_b, BLOCK_D=block_d,
        )
    return grad_mu, grad_logvar, grad_eps


def limits(dims: dict) -> list[str]:
    """The sizes this op's kernels cannot take (``dims``: B, D): the backward's column tiles of
    MAX_BLOCK_D run on CUDA grid axis 1."""
    dim, axis_max = dims.get("D", 0), GRID_LIMITS[1]
    if -(-dim // MAX_BLOCK_D) > axis_max:
        return [f"the backward's column tiles run on CUDA grid axis 1: D must be <= {axis_max * MAX_BLOCK_D}, got {dim}"]
    return []
