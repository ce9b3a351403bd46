"""The reference of discriminator_loss (and discriminator_accuracy): the discriminator's loss
on logits of z ~ q(z) and of permute_dims(z'); and the reference backend's launchers.

Shapes: B = batch, K = discriminator logits (1 or 2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastfvae.reference._common import compute_dtype

__all__ = ["discriminator_loss", "discriminator_accuracy"]


def discriminator_loss(d_real: torch.Tensor, d_perm: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss on logits of z ~ q(z) (real) and of permute_dims(z') (perm).

    (B, 2) logits: 0.5 * (CE(d_real, class 0) + CE(d_perm, class 1)), CE averaged over the
    batch (1Konny's convention). (B,) or (B, 1) logits: the logit is that of "from q(z)", so
    0.5 * (BCE(sigmoid(d_real), 1) + BCE(sigmoid(d_perm), 0)), consistent with tc_loss = mean l.
    """
    if d_real.dim() == 2 and d_real.shape[1] == 2:
        zeros = torch.zeros(d_real.shape[0], dtype=torch.long, device=d_real.device)
        ones = torch.ones(d_perm.shape[0], dtype=torch.long, device=d_perm.device)
        return 0.5 * (F.cross_entropy(d_real, zeros) + F.cross_entropy(d_perm, ones))
    real, perm = d_real.reshape(-1), d_perm.reshape(-1)
    return 0.5 * (
        F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
        + F.binary_cross_entropy_with_logits(perm, torch.zeros_like(perm))
    )


def discriminator_accuracy(d_real: torch.Tensor, d_perm: torch.Tensor) -> torch.Tensor:
    """Fraction of the 2B samples the discriminator classifies right (float32 scalar)."""
    if d_real.dim() == 2 and d_real.shape[1] == 2:
        real_ok = d_real[:, 0] >= d_real[:, 1]
        perm_ok = d_perm[:, 1] > d_perm[:, 0]
    else:
        real_ok = d_real.reshape(-1) >= 0
        perm_ok = d_perm.reshape(-1) < 0
    return torch.cat([real_ok, perm_ok]).float().mean()


# The reference backend's launchers (the protocol of fastfvae/backends/__init__.py).
def discriminator_loss_forward(d_real, d_perm):
    acc = compute_dtype(d_real.dtype)
    return discriminator_loss(d_real.to(acc), d_perm.to(acc)).to(d_real.dtype)


def discriminator_loss_backward(grad_loss, d_real, d_perm):
    """dL/dl = 0.5/B * (softmax(l) - onehot) for 2 logits, 0.5/B * (sigmoid(l) - y) for one."""
    acc = compute_dtype(d_real.dtype)
    real, perm = d_real.to(acc), d_perm.to(acc)
    scale = grad_loss.to(acc) * 0.5 / real.shape[0]
    if real.shape[1] == 2:
        grad_real = torch.softmax(real, dim=1) - torch.tensor([1.0, 0.0], dtype=acc, device=real.device)
        grad_perm = torch.softmax(perm, dim=1) - torch.tensor([0.0, 1.0], dtype=acc, device=real.device)
    else:
        grad_real = torch.sigmoid(real) - 1.0
        grad_perm = torch.sigmoid(perm)
    return (grad_real * scale).to(d_real.dtype), (grad_perm * scale).to(d_perm.dtype)
