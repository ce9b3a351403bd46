"""Triton kernels for log_qz: beta-TCVAE's log q(z) and log q(z_d) estimates, flash-attention
style (fastfvae/reference/log_qz.py defines the estimates and derives the MSS weights).

Queries z (M, D), components mu, logvar (K, D);
m[i, j, d] = log N(z[i, d]; mu[j, d], exp(logvar[j, d])) = c[j, d] - 0.5 (z[i, d] - mu[j, d])^2 iv[j, d]
with c = -0.5 (log 2 pi + logvar), iv = exp(-logvar); log-weights w[i, j] = own (j == i),
partner (j == (i + 1) % K), other (reference.log_qz_weight_constants, computed in the kernel).

Launches:
- forward, 1: one program per block of BLOCK_M queries streams over the components in tiles of
  BLOCK_K with an online logsumexp, for the joint (sum over d inside the tile) and for every d;
  nothing of size (M, K) is ever written.
- backward, 2 (no atomics, deterministic): one program per query block recomputes the tiles and
  sums grad_z over the components; one program per component block recomputes them and sums
  grad_mu, grad_logvar over the queries (like flash-attention's dq and dk/dv passes).
Tiles are (BLOCK_M, BLOCK_K, BLOCK_D) with BLOCK_D = next_pow2(D) (whole rows, since the joint
needs the sum over every d before its logsumexp), sized to about TILE_ELEMENTS values.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastfvae import reference as ref
from fastfvae.backends.triton._common import accumulator_torch_dtype, compute_dtype, device_guard, next_pow2

TILE_ELEMENTS = 4096
MAX_BLOCK_D = 1024  # D above this is rejected by the launcher (a latent of > 1024 dimensions)
LOG_2PI = tl.constexpr(ref.LOG_2PI)


@triton.jit
def _log_weights(dataset_size, K, MSS: tl.constexpr, COMPUTE: tl.constexpr):
    """(other, own, partner) log-weights in the compute dtype (reference.log_qz_weight_constants),
    computed here rather than passed: Triton passes Python floats as float32."""
    n = tl.sum(tl.zeros((1,), COMPUTE) + dataset_size, axis=0)  # int -> COMPUTE by promotion
    k = tl.sum(tl.zeros((1,), COMPUTE) + K, axis=0)
    if MSS:
        other = -tl.log(k - 1.0)
        own = -tl.log(n)
        partner = tl.log((n - k + 1.0) / (n * (k - 1.0)))
    else:
        other = -tl.log(n * k)
        own = other
        partner = other
    return other, own, partner


@triton.jit
def _log_density_tile(
    z, mu, lv, rows, cols, w_other, w_own, w_partner, K,
    mask_d,  # (BLOCK_D,) bool: d < D
):
    """For z (BM, BD), mu and lv (BK, BD) in the compute dtype, query indices rows (BM,) and
    component indices cols (BK,): returns (md, s) with md[i, j, d] = m + w (BM, BK, BD) and
    s[i, j] = sum_d m + w (BM, BK); components past K get -inf."""
    diff = z[:, None, :] - mu[None, :, :]
    m = -0.5 * (LOG_2PI + lv[None, :, :]) - 0.5 * diff * diff * tl.exp(-lv)[None, :, :]
    m = tl.where(mask_d[None, None, :], m, 0.0)
    r = rows[:, None]
    c = cols[None, :]
    w = tl.where(c == r, w_own, tl.where(c == (r + 1) % K, w_partner, w_other))
    w = tl.where(c < K, w, float("-inf"))
    s = tl.sum(m, axis=2) + w
    return m + w[:, :, None], s


@triton.jit
def _log_qz_forward_kernel(
    z_ptr,  # (M, D) input dtype, strided: queries
    mu_ptr,  # (K, D) input dtype, strided: component means
    lv_ptr,  # (K, D) input dtype, strided: component log-variances
    log_qz_ptr,  # (M,) compute dtype, contiguous: out logsumexp_j (sum_d m + w)
    log_qzj_ptr,  # (M, D) compute dtype, contiguous: out logsumexp_j (m + w) per d
    M, K, D,
    stride_z_m, stride_z_d, stride_mu_k, stride_mu_d, stride_lv_k, stride_lv_d,
    dataset_size,  # N (int); the log-weights are computed from N, K and MSS
    MSS: tl.constexpr,
    COMPUTE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Online logsumexp over component tiles for BLOCK_M queries: running maxima and sums
    (BM,) for the joint and (BM, BD) per dimension, rescaled when a tile raises the maximum."""
    w_other, w_own, w_partner = _log_weights(dataset_size, K, MSS, COMPUTE)
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    dims = tl.arange(0, BLOCK_D).to(tl.int64)
    row_ok = rows < M
    mask_d = dims < D
    zmask = row_ok[:, None] & mask_d[None, :]
    z = tl.load(z_ptr + rows[:, None] * stride_z_m + dims[None, :] * stride_z_d, mask=zmask, other=0.0).to(COMPUTE)
    max_joint = tl.full((BLOCK_M,), float("-inf"), COMPUTE)
    sum_joint = tl.zeros((BLOCK_M,), COMPUTE)
    max_dims = tl.full((BLOCK_M, BLOCK_D), float("-inf"), COMPUTE)
    sum_dims = tl.zeros((BLOCK_M, BLOCK_D), COMPUTE)
    for k0 in range(0, K, BLOCK_K):
        cols = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
        cmask = (cols < K)[:, None] & mask_d[None, :]
        mu = tl.load(mu_ptr + cols[:, None] * stride_mu_k + dims[None, :] * stride_mu_d, mask=cmask, other=0.0)
        lv = tl.load(lv_ptr + cols[:, None] * stride_lv_k + dims[None, :] * stride_lv_d, mask=cmask, other=0.0)
        md, s = _log_density_tile(z, mu.to(COMPUTE), lv.to(COMPUTE), rows, cols, w_other, w_own, w_partner, K,
                                  mask_d)
        # joint: (BM, BK) -> running (BM,)
        new_max = tl.maximum(max_joint, tl.max(s, axis=1))
        safe = tl.where(new_max == float("-inf"), 0.0, new_max)
        sum_joint = sum_joint * tl.exp(max_joint - safe) + tl.sum(tl.exp(s - safe[:, None]), axis=1)
        max_joint = new_max
        # per dimension: (BM, BK, BD) -> running (BM, BD)
        new_max_d = tl.maximum(max_dims, tl.max(md, axis=1))
        safe_d = tl.where(new_max_d == float("-inf"), 0.0, new_max_d)
        sum_dims = sum_dims * tl.exp(max_dims - safe_d) + tl.sum(tl.exp(md - safe_d[:, None, :]), axis=1)
        max_dims = new_max_d
    tl.store(log_qz_ptr + rows, max_joint + tl.log(sum_joint), mask=row_ok)
    tl.store(log_qzj_ptr + rows[:, None] * D + dims[None, :], max_dims + tl.log(sum_dims), mask=zmask)


@triton.jit
def _tile_gradient_weights(
    md, s, lq, lqj, g, h,
):
    """G[i, j, d] = g[i] exp(s - lq[i]) + h[i, d] exp(md - lqj[i, d]) for one tile."""
    p_joint = tl.exp(s - lq[:, None])
    p_dims = tl.exp(md - lqj[:, None, :])
    return g[:, None, None] * p_joint[:, :, None] + h[:, None, :] * p_dims


@triton.jit
def _log_qz_backward_z_kernel(
    g_ptr,  # (M,) compute dtype, strided: dL/dlog_qz
    h_ptr,  # (M, D) compute dtype, strided (stride 0 allowed): dL/dlog_qzj
    z_ptr,  # (M, D) input dtype, strided
    mu_ptr,  # (K, D) input dtype, strided
    lv_ptr,  # (K, D) input dtype, strided
    lq_ptr,  # (M,) compute dtype, strided: forward's log_qz
    lqj_ptr,  # (M, D) compute dtype, strided: forward's log_qzj
    grad_z_ptr,  # (M, D) input dtype, contiguous: out -sum_j G (z - mu) iv
    M, K, D,
    stride_g, stride_h_m, stride_h_d, stride_z_m, stride_z_d, stride_mu_k, stride_mu_d,
    stride_lv_k, stride_lv_d, stride_lq, stride_lqj_m, stride_lqj_d,
    dataset_size,
    MSS: tl.constexpr,
    COMPUTE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    w_other, w_own, w_partner = _log_weights(dataset_size, K, MSS, COMPUTE)
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    dims = tl.arange(0, BLOCK_D).to(tl.int64)
    row_ok = rows < M
    mask_d = dims < D
    zmask = row_ok[:, None] & mask_d[None, :]
    r, d = rows[:, None], dims[None, :]
    z = tl.load(z_ptr + r * stride_z_m + d * stride_z_d, mask=zmask, other=0.0).to(COMPUTE)
    g = tl.load(g_ptr + rows * stride_g, mask=row_ok, other=0.0).to(COMPUTE)
    h = tl.load(h_ptr + r * stride_h_m + d * stride_h_d, mask=zmask, other=0.0).to(COMPUTE)
    lq = tl.load(lq_ptr + rows * stride_lq, mask=row_ok, other=float("inf")).to(COMPUTE)
    lqj = tl.load(lqj_ptr + r * stride_lqj_m + d * stride_lqj_d, mask=zmask, other=float("inf")).to(COMPUTE)
    grad_z = tl.zeros((BLOCK_M, BLOCK_D), COMPUTE)
    for k0 in range(0, K, BLOCK_K):
        cols = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
        cmask = (cols < K)[:, None] & mask_d[None, :]
        mu = tl.load(mu_ptr + cols[:, None] * stride_mu_k + d * stride_mu_d, mask=cmask, other=0.0).to(COMPUTE)
        lv = tl.load(lv_ptr + cols[:, None] * stride_lv_k + d * stride_lv_d, mask=cmask, other=0.0).to(COMPUTE)
        md, s = _log_density_tile(z, mu, lv, rows, cols, w_other, w_own, w_partner, K, mask_d)
        G = _tile_gradient_weights(md, s, lq, lqj, g, h)
        G = tl.where((cols < K)[None, :, None], G, 0.0)
        rr = (z[:, None, :] - mu[None, :, :]) * tl.exp(-lv)[None, :, :]
        grad_z -= tl.sum(G * rr, axis=1)
    tl.store(grad_z_ptr + r * D + d, grad_z.to(grad_z_ptr.dtype.element_ty), mask=zmask)


@triton.jit
def _log_qz_backward_components_kernel(
    g_ptr, h_ptr, z_ptr, mu_ptr, lv_ptr, lq_ptr, lqj_ptr,  # as in _log_qz_backward_z_kernel
    grad_mu_ptr,  # (K, D) input dtype, contiguous: out sum_i G (z - mu) iv
    grad_lv_ptr,  # (K, D) input dtype, contiguous: out sum_i G (0.5 (z - mu)^2 iv - 0.5)
    M, K, D,
    stride_g, stride_h_m, stride_h_d, stride_z_m, stride_z_d, stride_mu_k, stride_mu_d,
    stride_lv_k, stride_lv_d, stride_lq, stride_lqj_m, stride_lqj_d,
    dataset_size,
    MSS: tl.constexpr,
    COMPUTE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    w_other, w_own, w_partner = _log_weights(dataset_size, K, MSS, COMPUTE)
    cols = (tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
    dims = tl.arange(0, BLOCK_D).to(tl.int64)
    mask_d = dims < D
    d = dims[None, :]
    cmask = (cols < K)[:, None] & mask_d[None, :]
    mu = tl.load(mu_ptr + cols[:, None] * stride_mu_k + d * stride_mu_d, mask=cmask, other=0.0).to(COMPUTE)
    lv = tl.load(lv_ptr + cols[:, None] * stride_lv_k + d * stride_lv_d, mask=cmask, other=0.0).to(COMPUTE)
    iv = tl.exp(-lv)
    grad_mu = tl.zeros((BLOCK_K, BLOCK_D), COMPUTE)
    grad_lv = tl.zeros((BLOCK_K, BLOCK_D), COMPUTE)
    for m0 in range(0, M, BLOCK_M):
        rows = (m0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        row_ok = rows < M
        zmask = row_ok[:, None] & mask_d[None, :]
        r = rows[:, None]
        z = tl.load(z_ptr + r * stride_z_m + d * stride_z_d, mask=zmask, other=0.0).to(COMPUTE)
        g = tl.load(g_ptr + rows * stride_g, mask=row_ok, other=0.0).to(COMPUTE)
        h = tl.load(h_ptr + r * stride_h_m + d * stride_h_d, mask=zmask, other=0.0).to(COMPUTE)
        lq = tl.load(lq_ptr + rows * stride_lq, mask=row_ok, other=float("inf")).to(COMPUTE)
        lqj = tl.load(lqj_ptr + r * stride_lqj_m + d * stride_lqj_d, mask=zmask, other=float("inf")).to(COMPUTE)
        md, s = _log_density_tile(z, mu, lv, rows, cols, w_other, w_own, w_partner, K, mask_d)
        G = _tile_gradient_weights(md, s, lq, lqj, g, h)
        G = tl.where(row_ok[:, None, None], G, 0.0)
        diff = z[:, None, :] - mu[None, :, :]
        rr = diff * iv[None, :, :]
        grad_mu += tl.sum(G * rr, axis=0)
        grad_lv += tl.sum(G * (0.5 * rr * diff - 0.5), axis=0)
    out = cols[:, None] * D + d
    tl.store(grad_mu_ptr + out, grad_mu.to(grad_mu_ptr.dtype.element_ty), mask=cmask)
    tl.store(grad_lv_ptr + out, grad_lv.to(grad_lv_ptr.dtype.element_ty), mask=cmask)


def _blocks(queries: int, components: int, dim: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_K, BLOCK_D) with BLOCK_M * BLOCK_K * BLOCK_D about TILE_ELEMENTS."""
    block_d = next_pow2(dim)
    if block_d > MAX_BLOCK_D:
        raise ValueError(f"z: the Triton log_qz kernels take D <= {MAX_BLOCK_D}, got D = {dim}")
    pairs = max(4, TILE_ELEMENTS // block_d)  # BLOCK_M * BLOCK_K
    block_k = min(next_pow2(components), max(2, next_pow2(int(pairs**0.5))))
    block_m = min(next_pow2(queries), max(2, pairs // block_k))
    return block_m, block_k, block_d


def _num_warps(dtype: torch.dtype, block_d: int) -> int:
    """8 warps for float64 and for D > 512, else 4. ptxas for sm_90 (Triton 3.6, M = K = 1024,
    kernels/cuda/triton_sm90_report.py, REVIEW.md): at 4 warps float64 spills 0.6-1.6 KiB per
    thread in most kernels and float32 at D = 1024 232 B; at 8 warps the forward and D = 64
    spill nothing and the worst left is 100 B (float64 backward z at D = 10, components at
    D = 1024); float32 below D = 1024 uses 128-239 registers without spills at 4 warps."""
    return 8 if dtype == torch.float64 or block_d > 512 else 4


def log_qz_forward(z, mu, logvar, dataset_size, method):
    """z (M, D), mu and logvar (K, D) -> (log_qz (M,), log_qzj (M, D)) in the compute dtype."""
    queries, dim = z.shape
    components = mu.shape[0]
    block_m, block_k, block_d = _blocks(queries, components, dim)
    acc = accumulator_torch_dtype(z.dtype)
    log_qz = torch.empty((queries,), dtype=acc, device=z.device)
    log_qzj = torch.empty((queries, dim), dtype=acc, device=z.device)
    with device_guard(z):
        _log_qz_forward_kernel[(triton.cdiv(queries, block_m),)](
            z, mu, logvar, log_qz, log_qzj, queries, components, dim,
            z.stride(0), z.stride(1), mu.stride(0), mu.stride(1), logvar.stride(0), logvar.stride(1),
            dataset_size, MSS=method == "mss",
            COMPUTE=compute_dtype(z.dtype), BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_D=block_d,
            num_warps=_num_warps(z.dtype, block_d),
        )
    return log_qz, log_qzj


def log_qz_backward(grad_log_qz, grad_log_qzj, z, mu, logvar, log_qz, log_qzj, dataset_size, method):
    """-> (grad_z (M, D), grad_mu (K, D), grad_logvar (K, D)) in the input dtype."""
    queries, dim = z.shape
    components = mu.shape[0]
    block_m, block_k, block_d = _blocks(queries, components, dim)
    acc = accumulator_torch_dtype(z.dtype)
    g, h = grad_log_qz.to(acc), grad_log_qzj.to(acc)
    grad_z = torch.empty_like(z, memory_format=torch.contiguous_format)
    grad_mu = torch.empty(mu.shape, dtype=mu.dtype, device=mu.device)
    grad_logvar = torch.empty(mu.shape, dtype=mu.dtype, device=mu.device)
    strides = (
        g.stride(0), h.stride(0), h.stride(1), z.stride(0), z.stride(1), mu.stride(0), mu.stride(1),
        logvar.stride(0), logvar.stride(1), log_qz.stride(0), log_qzj.stride(0), log_qzj.stride(1),
    )
    meta = dict(MSS=method == "mss", COMPUTE=compute_dtype(z.dtype), BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_D=block_d,
                num_warps=_num_warps(z.dtype, block_d))
    with device_guard(z):
        _log_qz_backward_z_kernel[(triton.cdiv(queries, block_m),)](
            g, h, z, mu, logvar, log_qz, log_qzj, grad_z, queries, components, dim, *strides, dataset_size, **meta,
        )
        _log_qz_backward_components_kernel[(triton.cdiv(components, block_k),)](
            g, h, z, mu, logvar, log_qz, log_qzj, grad_mu, grad_logvar, queries, components, dim, *strides,
            dataset_size, **meta,
        )
    return grad_z, grad_mu, grad_logvar


def limits(dims: dict) -> list[str]:
    """The sizes this op's kernels cannot take (``dims``: M, K, D): one tile spans all of D."""
    if dims.get("D", 0) > MAX_BLOCK_D:
        return [f"the log_qz kernels hold all of D in one tile: D must be <= {MAX_BLOCK_D}, got {dims['D']}"]
    return []
