"""The native log_qz: beta-TCVAE's log q(z) and log q(z_d), streamed over the components
(kernels/cpu/log_qz.cpp, kernels/cuda/log_qz.cu). Outputs and incoming gradients are in the
compute dtype (float32, float64 for float64).
"""
from __future__ import annotations

import ctypes

import torch

from fastfvae.backends.native.library import (
    DTYPE_CODES, _call, declare_entry_points, dtype_code, i64, ptr, strided2,
)

declare_entry_points("log_qz", {
    "ffv_log_qz_forward": (
        dtype_code, i64, i64, i64, *strided2, *strided2, *strided2,  # dtype M K D z mu logvar
        ctypes.c_double, ctypes.c_double, ctypes.c_double,  # log-weights: other own partner
        ptr, ptr, ptr,  # log_qz log_qzj stream
    ),
    "ffv_log_qz_backward": (
        dtype_code, i64, i64, i64, ptr, i64, *strided2,  # dtype M K D grad_log_qz(s0) grad_log_qzj
        *strided2, *strided2, *strided2, ptr, i64, *strided2,  # z mu logvar log_qz(s0) log_qzj
        ctypes.c_double, ctypes.c_double, ctypes.c_double,  # log-weights: other own partner
        ptr, ptr, ptr, ptr,  # grad_z grad_mu grad_logvar stream
    ),
})


def log_qz_forward(z, mu, logvar, dataset_size, method):
    from fastfvae.reference import compute_dtype, log_qz_weight_constants

    queries, dim = z.shape
    components = mu.shape[0]
    acc = compute_dtype(z.dtype)
    log_qz = torch.empty((queries,), dtype=acc, device=z.device)
    log_qzj = torch.empty((queries, dim), dtype=acc, device=z.device)
    z_s, mu_s, lv_s = z.stride(), mu.stride(), logvar.stride()
    _call(
        "ffv_log_qz_forward", z,
        DTYPE_CODES[z.dtype], queries, components, dim,
        z.data_ptr(), z_s[0], z_s[1], mu.data_ptr(), mu_s[0], mu_s[1], logvar.data_ptr(), lv_s[0], lv_s[1],
        *log_qz_weight_constants(components, dataset_size, method),
        log_qz.data_ptr(), log_qzj.data_ptr(),
    )
    return log_qz, log_qzj


def log_qz_backward(grad_log_qz, grad_log_qzj, z, mu, logvar, log_qz, log_qzj, dataset_size, method):
    from fastfvae.reference import compute_dtype, log_qz_weight_constants

    queries, dim = z.shape
    components = mu.shape[0]
    acc = compute_dtype(z.dtype)
    grad_log_qz, grad_log_qzj = grad_log_qz.to(acc), grad_log_qzj.to(acc)
    grad_z, grad_mu, grad_logvar = z.new_empty(*z.shape), mu.new_empty(*mu.shape), mu.new_empty(*mu.shape)
    z_s, mu_s, lv_s, h_s, lqj_s = z.stride(), mu.stride(), logvar.stride(), grad_log_qzj.stride(), log_qzj.stride()
    _call(
        "ffv_log_qz_backward", z,
        DTYPE_CODES[z.dtype], queries, components, dim,
        grad_log_qz.data_ptr(), grad_log_qz.stride(0), grad_log_qzj.data_ptr(), h_s[0], h_s[1],
        z.data_ptr(), z_s[0], z_s[1], mu.data_ptr(), mu_s[0], mu_s[1], logvar.data_ptr(), lv_s[0], lv_s[1],
        log_qz.data_ptr(), log_qz.stride(0), log_qzj.data_ptr(), lqj_s[0], lqj_s[1],
        *log_qz_weight_constants(components, dataset_size, method),
        grad_z.data_ptr(), grad_mu.data_ptr(), grad_logvar.data_ptr(),
    )
    return grad_z, grad_mu, grad_logvar
