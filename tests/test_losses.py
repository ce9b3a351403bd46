"""Drop-in loss modules against the formulas written out with plain torch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import fastfvae
from fastfvae.losses import DiscriminatorLoss, FactorVAELoss, reconstruction_loss


def test_factor_vae_loss_terms_and_gradients():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(5, 1, 8, 8, generator=g) > 0.5).float()
    x_recon = torch.randn(5, 1, 8, 8, generator=g, requires_grad=True)
    kl = torch.tensor(2.5, requires_grad=True)
    d_z = torch.randn(5, 2, generator=g, requires_grad=True)
    out = FactorVAELoss(gamma=6.0)(x_recon, x, kl, d_z)
    recon = F.binary_cross_entropy_with_logits(x_recon, x, reduction="sum") / 5
    tc = (d_z[:, 0] - d_z[:, 1]).mean()
    torch.testing.assert_close(out.recon, recon)
    torch.testing.assert_close(out.tc, tc)
    torch.testing.assert_close(out.total, recon + kl + 6.0 * tc)
    out.total.backward()
    torch.testing.assert_close(d_z.grad[:, 0], torch.full((5,), 6.0 / 5))
    torch.testing.assert_close(kl.grad, torch.tensor(1.0))


def test_gaussian_reconstruction_is_summed_squared_error_per_sample():
    x, x_recon = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    expected = ((x_recon - x) ** 2).sum() / 3
    torch.testing.assert_close(reconstruction_loss(x_recon, x, "gaussian"), expected)


def test_discriminator_loss_module_is_the_functional():
    d_real, d_perm = torch.randn(7, 2), torch.randn(7, 2)
    torch.testing.assert_close(DiscriminatorLoss()(d_real, d_perm), fastfvae.discriminator_loss(d_real, d_perm))


def test_konny_step_and_fastfvae_step_agree():
    """The README's claim: the drop-in gives 1Konny's numbers (same eps, same permutation)."""
    g = torch.Generator().manual_seed(3)
    mu, logvar = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    eps = torch.randn(8, 4, generator=g)
    w = torch.randn(4, 2, generator=g)
    x = (torch.rand(8, 1, 4, 4, generator=g) > 0.5).float()
    x_recon = torch.randn(8, 1, 4, 4, generator=g)
    # 1Konny: recon_loss + kl_divergence + gamma * (D_z[:, :1] - D_z[:, 1:]).mean()
    z = eps * torch.exp(logvar / 2) + mu
    kld = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1).mean()
    konny = F.binary_cross_entropy_with_logits(x_recon, x, reduction="sum") / 8 + kld + 10.0 * (z @ w)[:, :1].sub((z @ w)[:, 1:]).mean()
    z_f, kl_f = fastfvae.reparameterize_kl(mu, logvar, eps=eps)
    ours = FactorVAELoss(gamma=10.0)(x_recon, x, kl_f, z_f @ w).total
    torch.testing.assert_close(ours, konny)
