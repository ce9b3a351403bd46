"""The reference of tc_loss, the VAE's total-correlation term from discriminator logits, and
the reference backend's launchers.

Shapes: B = batch, K = discriminator logits (1 or 2).
"""
from __future__ import annotations

import torch

from fastfvae.reference._common import compute_dtype

__all__ = ["tc_loss"]


def tc_loss(d_logits: torch.Tensor) -> torch.Tensor:
    """The VAE's total-correlation term from discriminator logits on z ~ q(z).

    (B, 2) logits: mean_i (l_i0 - l_i1) = mean log D/(1-D) (density-ratio trick, class 0 is
    "from q(z)"); (B,) or (B, 1) logits: mean_i l_i, the logit of "from q(z)".
    """
    if d_logits.dim() == 2 and d_logits.shape[1] == 2:
        return (d_logits[:, 0] - d_logits[:, 1]).mean()
    return d_logits.reshape(-1).mean()


# The reference backend's launchers (the protocol of fastfvae/backends/__init__.py).
def tc_loss_forward(logits):
    return tc_loss(logits.to(compute_dtype(logits.dtype))).to(logits.dtype)


def tc_loss_backward(grad_tc, logits):
    batch, k = logits.shape
    g = grad_tc.to(compute_dtype(logits.dtype)) / batch
    grad = g.reshape(1, 1).expand(batch, k).clone()
    if k == 2:
        grad[:, 1] = -grad[:, 1]
    return grad.to(logits.dtype)
