"""The reference backend: fastfvae.reference in eager PyTorch, serving every device and dtype.

It draws its randomness from the same Philox stream as the kernels (reference.philox_*), so it
is the fallback of ``backend="auto"`` and the yardstick of the cross-backend RNG tests. Half
types are computed in float32 and rounded once, as the kernels do.
"""
from __future__ import annotations

import torch

from fastfvae import reference as ref

NAME = "reference"


def availability() -> str | None:
    return None


def why_not(op: str, device: torch.device, dtype: torch.dtype) -> str | None:
    return None


def _per_sample_kl_grad(grad_kl: torch.Tensor, batch: int, reduction: str) -> torch.Tensor:
    """gkl_i as a (B, 1) column, from the gradient of the reduced KL."""
    if reduction == "none":
        return grad_kl.reshape(batch, 1)
    scale = 1.0 / batch if reduction == "mean" else 1.0
    return (grad_kl * scale).reshape(1, 1).expand(batch, 1)


# ---------------------------------------------------------------------------- reparameterize_kl
def reparameterize_kl_forward(mu, logvar, eps, seed, reduction):
    acc = ref.compute_dtype(mu.dtype)
    batch, dim = mu.shape
    if eps is None:
        eps = ref.reparameterize_noise(seed, batch, dim, device=mu.device)
    z, kl = ref.reparameterize_kl(mu.to(acc), logvar.to(acc), eps.to(acc), reduction)
    return z.to(mu.dtype), kl.to(mu.dtype)


def reparameterize_kl_backward(grad_z, grad_kl, mu, logvar, eps, seed, reduction, need_grad_eps):
    """eps: the forward's given noise, or None: regenerated from ``seed`` (the forward's draw)."""
    acc = ref.compute_dtype(mu.dtype)
    batch, dim = mu.shape
    if eps is None:
        eps = ref.reparameterize_noise(seed, batch, dim, device=mu.device)
    gkl = _per_sample_kl_grad(grad_kl.to(acc), batch, reduction)
    grad_mu, grad_logvar, grad_eps = ref.reparameterize_kl_backward(
        grad_z.to(acc), gkl, mu.to(acc), logvar.to(acc), eps.to(acc)
    )
    return grad_mu.to(mu.dtype), grad_logvar.to(mu.dtype), (grad_eps.to(mu.dtype) if need_grad_eps else None)


# ---------------------------------------------------------------------------- permute_dims
def permute_dims_forward(z, seed, need_index):
    groups, batch, dim = z.shape
    index = ref.philox_permutation(seed, groups, batch, dim, device=z.device)
    return ref.permute_dims(z, index), (index.to(torch.int32) if need_index else None)


def permute_dims_backward(grad_out, index):
    """index: int32 (G, B, D) source rows; grad_z[g, index[g, i, d], d] = grad_out[g, i, d]."""
    return torch.zeros_like(grad_out).scatter_(1, index.long(), grad_out)


# ---------------------------------------------------------------------------- tc_loss
def tc_loss_forward(logits):
    return ref.tc_loss(logits.to(ref.compute_dtype(logits.dtype))).to(logits.dtype)


def tc_loss_backward(grad_tc, logits):
    batch, k = logits.shape
    g = grad_tc.to(ref.compute_dtype(logits.dtype)) / batch
    grad = g.reshape(1, 1).expand(batch, k).clone()
    if k == 2:
        grad[:, 1] = -grad[:, 1]
    return grad.to(logits.dtype)


# ---------------------------------------------------------------------------- discriminator_loss
def discriminator_loss_forward(d_real, d_perm):
    acc = ref.compute_dtype(d_real.dtype)
    return ref.discriminator_loss(d_real.to(acc), d_perm.to(acc)).to(d_real.dtype)


def discriminator_loss_backward(grad_loss, d_real, d_perm):
    """dL/dl = 0.5/B * (softmax(l) - onehot) for 2 logits, 0.5/B * (sigmoid(l) - y) for one."""
    acc = ref.compute_dtype(d_real.dtype)
    real, perm = d_real.to(acc), d_perm.to(acc)
    scale = grad_loss.to(acc) * 0.5 / real.shape[0]
    if real.shape[1] == 2:
        grad_real = torch.softmax(real, dim=1) - torch.tensor([1.0, 0.0], dtype=acc, device=real.device)
        grad_perm = torch.softmax(perm, dim=1) - torch.tensor([0.0, 1.0], dtype=acc, device=real.device)
    else:
        grad_real = torch.sigmoid(real) - 1.0
        grad_perm = torch.sigmoid(perm)
    return (grad_real * scale).to(d_real.dtype), (grad_perm * scale).to(d_perm.dtype)


# ---------------------------------------------------------------------------- log_qz
def log_qz_forward(z, mu, logvar, dataset_size, method):
    """(log_qz (M,), log_qzj (M, D)) in the compute dtype, materialising the (M, K, D) log-densities."""
    acc = ref.compute_dtype(z.dtype)
    return ref.log_qz_marginals(z.to(acc), mu.to(acc), logvar.to(acc), dataset_size, method)


def log_qz_backward(grad_log_qz, grad_log_qzj, z, mu, logvar, log_qz, log_qzj, dataset_size, method):
    acc = ref.compute_dtype(z.dtype)
    grads = ref.log_qz_backward(
        grad_log_qz.to(acc), grad_log_qzj.to(acc), z.to(acc), mu.to(acc), logvar.to(acc),
        log_qz.to(acc), log_qzj.to(acc), dataset_size, method,
    )
    return tuple(g.to(z.dtype) for g in grads)


# ---------------------------------------------------------------------------- gather_images
def gather_images_forward(packed, index, dtype):
    return ref.gather_images(packed, index, dtype)
