"""The native backend's op launchers (the protocol of fastfvae/backends/__init__.py): each
passes its inputs with their strides (no ``.contiguous()`` copies), allocates its contiguous
outputs and, on CUDA, the forward's workspace, and runs the entry point through ``_call``.

Adding an op: its entry points in library.py's ``ARGTYPES`` and one section here.
"""
from __future__ import annotations

import torch

from fastfvae.backends.native.library import DTYPE_CODES, REDUCTION_CODES, _call, _workspace, _workspace_args

# ---------------------------------------------------------------------------------------------
# reparameterize_kl
# ---------------------------------------------------------------------------------------------
def _optional_strided2(t):
    """(pointer, stride 0, stride 1) of a (rows, cols) tensor, or (NULL, 0, 0) for None."""
    if t is None:
        return None, 0, 0
    return t.data_ptr(), t.stride(0), t.stride(1)


def reparameterize_kl_forward(mu, logvar, eps, seed, reduction):
    batch, dim = mu.shape
    z = mu.new_empty((batch, dim))
    kl = mu.new_empty((batch,) if reduction == "none" else ())
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
    grad_mu, grad_logvar = mu.new_empty((batch, dim)), mu.new_empty((batch, dim))
    grad_eps = mu.new_empty((batch, dim)) if need_grad_eps else None
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


# ---------------------------------------------------------------------------------------------
# permute_dims (index: int32 (G, B, D) source rows, contiguous)
# ---------------------------------------------------------------------------------------------
def permute_dims_forward(z, seed, need_index):
    groups, batch, dim = z.shape
    out = z.new_empty((groups, batch, dim))
    index = torch.empty((groups, batch, dim), dtype=torch.int32, device=z.device) if need_index else None
    z_s = z.stride()
    workspace = _workspace("permute_dims", z, DTYPE_CODES[z.dtype], groups, batch, dim)
    _call(
        "ffv_permute_dims_forward", z,
        DTYPE_CODES[z.dtype], groups, batch, dim,
        z.data_ptr(), z_s[0], z_s[1], z_s[2],
        seed.data_ptr(), out.data_ptr(), index.data_ptr() if need_index else None,
        *_workspace_args(workspace),
    )
    return out, index


def permute_dims_backward(grad_out, index):
    groups, batch, dim = grad_out.shape
    if index.dtype != torch.int32 or index.shape != grad_out.shape:
        raise ValueError(
            f"index: expected int32 {tuple(grad_out.shape)} from permute_dims_forward, "
            f"got {index.dtype} {tuple(index.shape)}"
        )
    index = index.contiguous()
    grad_z = grad_out.new_empty((groups, batch, dim))
    g_s = grad_out.stride()
    _call(
        "ffv_permute_dims_backward", grad_out,
        DTYPE_CODES[grad_out.dtype], groups, batch, dim,
        grad_out.data_ptr(), g_s[0], g_s[1], g_s[2],
        index.data_ptr(), grad_z.data_ptr(),
    )
    return grad_z


# ---------------------------------------------------------------------------------------------
# tc_loss
# ---------------------------------------------------------------------------------------------
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
    grad = logits.new_empty((batch, k))
    _call("ffv_tc_loss_backward", logits, DTYPE_CODES[logits.dtype], batch, k,
          grad_tc.data_ptr(), grad.data_ptr())
    return grad


# ---------------------------------------------------------------------------------------------
# discriminator_loss
# ---------------------------------------------------------------------------------------------
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
    grad_real, grad_perm = d_real.new_empty((batch, k)), d_perm.new_empty((batch, k))
    r, p = d_real.stride(), d_perm.stride()
    _call("ffv_discriminator_loss_backward", d_real, DTYPE_CODES[d_real.dtype], batch, k,
          grad_loss.data_ptr(), d_real.data_ptr(), r[0], r[1], d_perm.data_ptr(), p[0], p[1],
          grad_real.data_ptr(), grad_perm.data_ptr())
    return grad_real, grad_perm


# ---------------------------------------------------------------------------------------------
# log_qz (outputs and incoming gradients in the compute dtype: float32, float64 for float64)
# ---------------------------------------------------------------------------------------------
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
    grad_z, grad_mu, grad_logvar = z.new_empty(z.shape), mu.new_empty(mu.shape), mu.new_empty(mu.shape)
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


# ---------------------------------------------------------------------------------------------
# Shape limits (the dispatcher's per-call reasons; kernels/include/arg_checks.h runs the same)
# ---------------------------------------------------------------------------------------------
INT32_MAX = 2**31 - 1
LIMITED_OPS = ("permute_dims",)  # the ops ``limits`` can refuse (the dispatcher skips the others)


def limits(op: str, dims: dict) -> list[str]:
    """Every size of this call the native kernels cannot take (``dims``: the op's B, D, G, ...)."""
    found = []
    if op == "permute_dims" and dims.get("B", 0) > INT32_MAX:
        found.append(f"permute_dims writes int32 row indices: B must be <= {INT32_MAX}, got {dims['B']}")
    return found


# ---------------------------------------------------------------------------------------------
# gather_images (forward only: the packed table and the index have no gradient)
# ---------------------------------------------------------------------------------------------


def gather_images_forward(packed, index, dtype):
    """packed uint8 (N, 512), index int32/int64 (B,) -> (B, 1, 64, 64) of dtype (NaN images for
    indices outside [0, N))."""
    if packed.stride(1) != 1:
        packed = packed.contiguous()  # the kernels read the bytes of a row contiguously
    rows, batch = packed.shape[0], index.shape[0]
    out = torch.empty((batch, 1, 64, 64), dtype=dtype, device=packed.device)
    _call(
        "ffv_gather_images_forward", packed,
        DTYPE_CODES[dtype], rows, batch, packed.data_ptr(), packed.stride(0),
        index.data_ptr(), index.stride(0), int(index.dtype == torch.int32), out.data_ptr(),
    )
    return out
