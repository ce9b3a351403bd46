"""The native reparameterize_kl: z = mu + std * eps and the Gaussian KL, fused
(kernels/cpu/reparameterize_kl.cpp, kernels/cuda/reparameterize_kl.cu).
"""
from __future__ import annotations

from fastfvae.backends.native.library import (
    DTYPE_CODES, REDUCTION_CODES, _call, _workspace, _workspace_args, declare_entry_points, dtype_code, i32, i64, ptr,
    strided2,
)

declare_entry_points("reparameterize_kl", {
    "ffv_reparameterize_kl_forward": (
        dtype_code, i64, i64, *strided2, *strided2, *strided2,  # dtype B D mu logvar eps
        ptr, i32, ptr, ptr,  # seed reduction z kl
        ptr, i64, ptr,  # workspace workspace_bytes stream
    ),
    "ffv_reparameterize_kl_workspace_bytes": (dtype_code, i64, i64, i32, ptr),  # dtype B D reduction bytes*
    "ffv_reparameterize_kl_backward": (
        dtype_code, i64, i64, *strided2, ptr, i64, i32,  # dtype B D grad_z grad_kl(s0) reduction
        *strided2, *strided2, *strided2, ptr,  # mu logvar eps seed
        ptr, ptr, ptr, ptr,  # grad_mu grad_logvar grad_eps stream
    ),
})


def _optional_strided2(t):
    """(pointer, stride 0, stride 1) of a (rows, cols) tensor, or (NULL, 0, 0) for None."""
    if t is None:
        return None, 0, 0
    return t.data_ptr(), t.stride(0), t.stride(1)


def reparameterize_kl_forward(mu, logvar, eps, seed, reduction):
    batch, dim = mu.shape
    z = mu.new_empty(batch, dim)
    kl = mu.new_empty(batch) if reduction == "none" else mu.new_empty(())
    mu_s, logvar_s = mu.stride(), logvar.stride()
    workspace = _workspace("reparameterize_kl", mu, DTYPE_CODES[mu.dtype], batch, dim, REDUCTION_CODES[reduction])
    _call(
        "ffv_reparameterize_kl_forward", mu,
        DTYPE_CODES[mu.dtype], batch, dim,
        mu.data_ptr(), mu_s[0], mu_s[1],
        logvar.data_ptr(), logvar_s[0], logvar_s[1],
        *_optional_strided2(eps),
        None if seed is None else seed.data_ptr(), REDUCTION_CODES[reduction], z.data_ptr(), kl.data_ptr(),
        *_workspace_args(workspace),
    )
    return z, kl


def reparameterize_kl_backward(grad_z, grad_kl, mu, logvar, eps, seed, reduction, need_grad_eps):
    """eps: the forward's given noise, or None: the kernel regenerates the forward's draw from seed."""
    batch, dim = mu.shape
    grad_mu, grad_logvar = mu.new_empty(batch, dim), mu.new_empty(batch, dim)
    grad_eps = mu.new_empty(batch, dim) if need_grad_eps else None
    gz_s, mu_s, logvar_s = grad_z.stride(), mu.stride(), logvar.stride()
    _call(
        "ffv_reparameterize_kl_backward", mu,
        DTYPE_CODES[mu.dtype], batch, dim,
        grad_z.data_ptr(), gz_s[0], gz_s[1],
        grad_kl.data_ptr(), grad_kl.stride(0) if reduction == "none" else 0, REDUCTION_CODES[reduction],
        mu.data_ptr(), mu_s[0], mu_s[1],
        logvar.data_ptr(), logvar_s[0], logvar_s[1],
        *_optional_strided2(eps), None if seed is None else seed.data_ptr(),
        grad_mu.data_ptr(), grad_logvar.data_ptr(), grad_eps.data_ptr() if need_grad_eps else None,
    )
    return grad_mu, grad_logvar, grad_eps
