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
from fastfvae._checks import check_choice, check_float_tensor, check_positive_int
from fastfvae.reference import gaussian_log_density

RECONSTRUCTIONS = ("bernoulli", "gaussian")


def _check_same_batch(name: str, value: Tensor, x_recon: Tensor) -> None:
    """``value`` (B, ...) belongs to the batch of ``x_recon`` (B, ...) (issue 14.15)."""
    if isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] != x_recon.shape[0]:
        raise ValueError(
            f"{name}: expected the batch size of x_recon B = {x_recon.shape[0]}, got shape {tuple(value.shape)}"
        )


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
        _check_same_batch("d_z", d_z, x_recon)
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


# =============================================================================================
# beta-TCVAE (Chen et al. 2018) and beta-VAE (Higgins et al. 2017), for comparisons on the same
# data and metric (fastfvae train --objective betatcvae | betavae)
# =============================================================================================
class BetaTCVAELossOutput(NamedTuple):
    total: Tensor  # recon + alpha * mi + beta * tc + gamma * dwkl, the loss to minimise
    recon: Tensor
    mi: Tensor  # index-code mutual information: mean_i (log q(z_i|x_i) - log q(z_i))
    tc: Tensor  # total correlation: mean_i (log q(z_i) - sum_d log q(z_id))
    dwkl: Tensor  # dimension-wise KL: mean_i (sum_d log q(z_id) - log p(z_i))


class BetaTCVAELoss(nn.Module):
    """beta-TCVAE's objective: recon + alpha * MI + beta * TC + gamma * dimension-wise KL.

    The three terms split the batch's KL estimate, mi + tc + dwkl = mean_i (log q(z_i|x_i) -
    log p(z_i)); log q(z) and log q(z_d) are estimated on the minibatch by ``fastfvae.log_qz``
    ("mws" or "mss", see there) from a data set of ``dataset_size`` inputs, without a B x B x D
    tensor.

    forward(x_recon, x, z, mu, logvar):
        x_recon, x: decoder output and data (see ``reconstruction_loss``);
        z: (B, D) the reparameterised sample (e.g. from ``fastfvae.reparameterize_kl``), NOT detached;
        mu, logvar: (B, D) the encoder's posterior. Float tensors are promoted to one dtype.
    Returns BetaTCVAELossOutput(total, recon, mi, tc, dwkl).
    """

    def __init__(self, alpha: float = 1.0, beta: float = 6.0, gamma: float = 1.0, *, dataset_size: int,
                 method: str = "mws", reconstruction: str = "bernoulli", backend: str = "auto"):
        super().__init__()
        check_choice("reconstruction", reconstruction, RECONSTRUCTIONS)
        check_choice("method", method, ("mws", "mss"))
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.dataset_size = check_positive_int("dataset_size", dataset_size)  # numpy ints too
        self.method = method
        self.reconstruction = reconstruction
        self.backend = backend

    def forward(self, x_recon: Tensor, x: Tensor, z: Tensor, mu: Tensor, logvar: Tensor) -> BetaTCVAELossOutput:
        for name, value in (("z", z), ("mu", mu), ("logvar", logvar)):
            check_float_tensor(name, value, (2,))
        dtype = torch.promote_types(torch.promote_types(z.dtype, mu.dtype), logvar.dtype)
        z, mu, logvar = z.to(dtype), mu.to(dtype), logvar.to(dtype)
        if z.shape != mu.shape:
            raise ValueError(f"z: expected the shape of mu {tuple(mu.shape)}, got {tuple(z.shape)}")
        recon = reconstruction_loss(x_recon, x, self.reconstruction)
        _check_same_batch("z", z, x_recon)
        log_qz, log_prod_qzj = functional.log_qz(
            z, mu, logvar, dataset_size=self.dataset_size, method=self.method, backend=self.backend
        )
        log_q_z_given_x = gaussian_log_density(z, mu, logvar).sum(dim=1)
        zero = z.new_zeros(())  # p(z) = N(0, I): mean 0, log-variance 0
        log_pz = gaussian_log_density(z, zero, zero).sum(dim=1)
        mi = (log_q_z_given_x - log_qz).mean()
        tc = (log_qz - log_prod_qzj).mean()
        dwkl = (log_prod_qzj - log_pz).mean()
        total = recon + self.alpha * mi + self.beta * tc + self.gamma * dwkl
        return BetaTCVAELossOutput(total, recon, mi, tc, dwkl)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, dataset_size={self.dataset_size}, "
                f"method={self.method!r}, reconstruction={self.reconstruction!r}, backend={self.backend!r}")


class BetaVAELossOutput(NamedTuple):
    total: Tensor  # recon + beta * kl
    recon: Tensor
    kl: Tensor


class BetaVAELoss(nn.Module):
    """beta-VAE's objective: recon + beta * KL(q(z|x) || p(z)).

    forward(x_recon, x, kl): kl is the scalar KL from ``fastfvae.reparameterize_kl`` (reduction
    "mean"). Returns BetaVAELossOutput(total, recon, kl).
    """

    def __init__(self, beta: float = 4.0, reconstruction: str = "bernoulli"):
        super().__init__()
        check_choice("reconstruction", reconstruction, RECONSTRUCTIONS)
        self.beta = float(beta)
        self.reconstruction = reconstruction

    def forward(self, x_recon: Tensor, x: Tensor, kl: Tensor) -> BetaVAELossOutput:
        if not isinstance(kl, Tensor) or kl.dim() != 0:
            got = tuple(kl.shape) if isinstance(kl, Tensor) else type(kl).__name__
            raise ValueError(f"kl: expected a scalar tensor (reparameterize_kl with reduction='mean'), got {got}")
        recon = reconstruction_loss(x_recon, x, self.reconstruction)
        return BetaVAELossOutput(recon + self.beta * kl, recon, kl)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, reconstruction={self.reconstruction!r}"
