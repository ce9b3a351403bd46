"""The reference of reparameterize_kl: z = mu + exp(logvar / 2) * eps and the Gaussian KL to
N(0, I), their gradients by the textbook formulas, and the reference backend's launchers over them.

Shapes: B = batch, D = latent size.
"""
from __future__ import annotations

import torch

from fastfvae.reference._common import compute_dtype, reduce
from fastfvae.reference.philox import philox_randn

__all__ = ["reparameterize", "gaussian_kl", "reparameterize_kl", "reparameterize_noise",
           "reparameterize_kl_gradients"]


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * eps; all (B, D)."""
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over D, then reduced over B.

    kl_i = 0.5 * sum_d (mu^2 + exp(logvar) - logvar - 1); returns () or (B,) for 'none'.
    """
    per_sample = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(dim=-1)
    return reduce(per_sample, reduction)


def reparameterize_kl(mu, logvar, eps, reduction: str = "mean"):
    """(z, kl) with the eps given: the fused op's definition."""
    return reparameterize(mu, logvar, eps), gaussian_kl(mu, logvar, reduction)


def reparameterize_noise(seed: int | torch.Tensor, batch: int, dim: int, device=None) -> torch.Tensor:
    """The float32 (B, D) eps every backend draws for reparameterize_kl: element (i, d) is
    philox_randn(seed, i*D + d). Counter-based, so the backward regenerates the forward's eps
    from the saved seed instead of storing it (as flash-attention replays its dropout mask)."""
    if device is None:
        device = seed.device if isinstance(seed, torch.Tensor) else torch.device("cpu")
    offsets = torch.arange(batch * dim, dtype=torch.int64, device=device).reshape(batch, dim)
    return philox_randn(seed, offsets)


def reparameterize_kl_gradients(grad_z, gkl, mu, logvar, eps):
    """The gradients of (z, kl) by the textbook formula, all (B, D) (gkl: (B, 1) or (B, D)).

    gkl is row i's weight of the KL gradient (grad_kl[i], or the reduced KL's gradient, divided
    by B for "mean"). With std = exp(logvar / 2):
        grad_mu     = gz + gkl * mu
        grad_logvar = 0.5 * gz * std * eps + 0.5 * gkl * (exp(logvar) - 1)
        grad_eps    = gz * std
    std * eps is NOT rebuilt as z - mu: z is rounded to its dtype (bfloat16: 8 bits; mu = 3,
    logvar = -8 leaves std * eps below z's last bit) and inf - inf is NaN for an infinite mu.
    """
    std = torch.exp(0.5 * logvar)
    grad_mu = grad_z + gkl * mu
    grad_logvar = 0.5 * grad_z * std * eps + 0.5 * gkl * (torch.exp(logvar) - 1.0)
    return grad_mu, grad_logvar, grad_z * std


# The reference backend's launchers (the protocol of fastfvae/backends/__init__.py): the compute
# dtype in, the input dtype out.
def _per_sample_kl_grad(grad_kl: torch.Tensor, batch: int, reduction: str) -> torch.Tensor:
    """gkl_i as a (B, 1) column, from the gradient of the reduced KL."""
    if reduction == "none":
        return grad_kl.reshape(batch, 1)
    scale = 1.0 / batch if reduction == "mean" else 1.0
    return (grad_kl * scale).reshape(1, 1).expand(batch, 1)


def reparameterize_kl_forward(mu, logvar, eps, seed, reduction):
    acc = compute_dtype(mu.dtype)
    batch, dim = mu.shape
    if eps is None:
        eps = reparameterize_noise(seed, batch, dim, device=mu.device)
    z, kl = reparameterize_kl(mu.to(acc), logvar.to(acc), eps.to(acc), reduction)
    return z.to(mu.dtype), kl.to(mu.dtype)


def reparameterize_kl_backward(grad_z, grad_kl, mu, logvar, eps, seed, reduction, need_grad_eps):
    """eps: the forward's given noise, or None: regenerated from ``seed`` (the forward's draw)."""
    acc = compute_dtype(mu.dtype)
    batch, dim = mu.shape
    if eps is None:
        eps = reparameterize_noise(seed, batch, dim, device=mu.device)
    gkl = _per_sample_kl_grad(grad_kl.to(acc), batch, reduction)
    grad_mu, grad_logvar, grad_eps = reparameterize_kl_gradients(
        grad_z.to(acc), gkl, mu.to(acc), logvar.to(acc), eps.to(acc)
    )
    return grad_mu.to(mu.dtype), grad_logvar.to(mu.dtype), (grad_eps.to(mu.dtype) if need_grad_eps else None)
