"""Drop-in loss modules for FactorVAE training loops (DESIGN.md §2).

A 1Konny-style loop switches by replacing its reparametrize + kl_divergence with
``fastfvae.reparameterize_kl``, its TC term with ``FactorVAELoss`` and its two cross-entropies
with ``DiscriminatorLoss`` (README.md shows the two loops side by side).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastfvae import functional
from fastfvae._checks import check_choice, check_float_tensor

RECONSTRUCTIONS = ("bernoulli", "gaussian")


class FactorVAELossOutput(NamedTuple):
    total: Tensor  # recon + kl + gamma * tc, the VAE's loss to minimise
    recon: Tensor
    kl: Tensor
    tc: Tensor


def reconstruction_loss(x_recon: Tensor, x: Tensor, distribution: str = "bernoulli") -> Tensor:
    """Negative log-likelihood summed over pixels, averaged over the batch.

    bernoulli: x_recon are logits, BCE-with-logits against x in [0, 1].
    gaussian: x_recon is the mean (unit variance, constants dropped): sum of squared errors.
    x_recon, x: (B, ...) of one shape.
    """
    check_float_tensor("x_recon", x_recon, (2, 3, 4, 5))
    check_choice("distribution", distribution, RECONSTRUCTIONS)
    if not isinstance(x, Tensor) or x.shape != x_recon.shape:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x: expected the shape of x_recon {tuple(x_recon.shape)}, got {got}")
    x = x.to(x_recon.dtype)
    if distribution == "bernoulli":
        total = F.binary_cross_entropy_with_logits(x_recon, x, reduction="sum")
    else:
        total = F.mse_loss(x_recon, x, reduction="sum")
    return total / x_recon.shape[0]


class FactorVAELoss(nn.Module):
    """The VAE's FactorVAE objective: recon + kl + gamma * tc.

    forward(x_recon, x, kl, d_z):
        x_recon, x: (B, C, H, W) decoder output and data (see ``reconstruction_loss``);
        kl: the KL returned by ``fastfvae.reparameterize_kl`` (reduction "mean");
        d_z: discriminator logits on the sampled z, (B, 2) or (B,)/(B, 1), NOT detached: the
             TC gradient must reach the encoder.
    Returns FactorVAELossOutput(total, recon, kl, tc).
    """

    def __init__(self, gamma: float = 35.0, reconstruction: str = "bernoulli", backend: str = "auto"):
        super().__init__()
        check_choice("reconstruction", reconstruction, RECONSTRUCTIONS)
        self.gamma = float(gamma)
        self.reconstruction = reconstruction
        self.backend = backend

    def forward(self, x_recon: Tensor, x: Tensor, kl: Tensor, d_z: Tensor) -> FactorVAELossOutput:
        if not isinstance(kl, Tensor) or kl.dim() != 0:
            got = tuple(kl.shape) if isinstance(kl, Tensor) else type(kl).__name__
            raise ValueError(f"kl: expected a scalar tensor (reparameterize_kl with reduction='mean'), got {got}")
        recon = reconstruction_loss(x_recon, x, self.reconstruction)
        tc = functional.tc_loss(d_z, backend=self.backend)
        return FactorVAELossOutput(recon + kl + self.gamma * tc, recon, kl, tc)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, reconstruction={self.reconstruction!r}, backend={self.backend!r}"


class DiscriminatorLoss(nn.Module):
    """The discriminator's loss: forward(d_real, d_perm) -> scalar.

    d_real: logits of D on z.detach() of one batch; d_perm: logits of D on
    permute_dims(z').detach() of a second batch. Both (B, 2) (CE, class 0 = "from q(z)")
    or both (B,)/(B, 1) (BCE, the logit of "from q(z)").
    """

    def __init__(self, backend: str = "auto"):
        super().__init__()
        self.backend = backend

    def forward(self, d_real: Tensor, d_perm: Tensor) -> Tensor:
        return functional.discriminator_loss(d_real, d_perm, backend=self.backend)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"
