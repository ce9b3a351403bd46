"""The baselines fastfvae is measured against, in one place (DESIGN.md §14).

Benchmarks and tests import these; nothing else defines them. "1Konny-style" follows the
widely used public FactorVAE implementation (github.com/1Konny/FactorVAE): eager PyTorch,
per-column ``randperm`` for permute_dims, slicing for the TC term, two cross-entropies.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastfvae import reference


def konny_reparametrize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    std = logvar.div(2).exp()
    eps = std.data.new(std.size()).normal_()
    return eps.mul(std).add_(mu)


def konny_kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    kld = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(1).mean()
    return kld


def konny_permute_dims(z: torch.Tensor) -> torch.Tensor:
    """Per-column randperm loop on (B, D)."""
    assert z.dim() == 2
    B, _ = z.size()
    perm_z = []
    for z_j in z.split(1, 1):
        perm = torch.randperm(B, device=z.device)
        perm_z.append(z_j[perm])
    return torch.cat(perm_z, 1)


def argsort_permute_dims(z: torch.Tensor) -> torch.Tensor:
    """rand(B, D).argsort(0) + gather: the common vectorised alternative (any leading dims)."""
    index = torch.rand(z.shape, device=z.device).argsort(dim=-2)
    return torch.gather(z, -2, index)


def konny_tc(d_z: torch.Tensor) -> torch.Tensor:
    return (d_z[:, :1] - d_z[:, 1:]).mean()


def konny_discriminator_loss(d_z: torch.Tensor, d_z_pperm: torch.Tensor) -> torch.Tensor:
    ones = torch.ones(d_z.size(0), dtype=torch.long, device=d_z.device)
    zeros = torch.zeros(d_z.size(0), dtype=torch.long, device=d_z.device)
    return 0.5 * (F.cross_entropy(d_z, zeros) + F.cross_entropy(d_z_pperm, ones))


def konny_loss_head(mu, logvar, mu2, logvar2, d_logits_fn):
    """Everything one FactorVAE step computes outside the networks, 1Konny-style.

    mu, logvar: (B, D) encoder outputs of batch 1; mu2, logvar2: of batch 2.
    d_logits_fn: (B, D) -> (B, 2) stands in for the discriminator (e.g. a fixed linear map).
    Returns (vae_loss_without_recon, d_loss) ready for backward.
    """
    z = konny_reparametrize(mu, logvar)
    kld = konny_kl_divergence(mu, logvar)
    d_z = d_logits_fn(z)
    vae_tc = konny_tc(d_z)
    z_prime = konny_reparametrize(mu2, logvar2)
    z_pperm = konny_permute_dims(z_prime).detach()
    d_loss = konny_discriminator_loss(d_logits_fn(z.detach()), d_logits_fn(z_pperm))
    return kld + vae_tc, d_loss


def fastfvae_loss_head(mu, logvar, mu2, logvar2, d_logits_fn, backend: str = "auto"):
    """The same computation on fastfvae's fused ops (for like-with-like comparisons).

    z' is drawn under ``no_grad``, as fastfvae's trainer draws it (fastfvae/train/steps.py): the
    discriminator only sees it detached, so no graph is recorded and the CPU kernel draws eps
    inside itself instead of keeping it for a backward (1Konny's head records z' and detaches it
    after permute_dims; the values are the same either way)."""
    from fastfvae import functional as ffv

    z, kl = ffv.reparameterize_kl(mu, logvar, backend=backend)
    vae_tc = ffv.tc_loss(d_logits_fn(z), backend=backend)
    with torch.no_grad():
        z_prime, _ = ffv.reparameterize_kl(mu2, logvar2, backend=backend)
    z_pperm = ffv.permute_dims(z_prime, backend=backend)
    d_loss = ffv.discriminator_loss(d_logits_fn(z.detach()), d_logits_fn(z_pperm), backend=backend)
    return kl + vae_tc, d_loss


def reference_loss_head(mu, logvar, mu2, logvar2, d_logits_fn):
    """The reference formulas with torch RNG: what ``torch.compile`` of the reference compiles."""
    z = reference.reparameterize(mu, logvar, torch.randn_like(mu))
    kl = reference.gaussian_kl(mu, logvar)
    vae_tc = reference.tc_loss(d_logits_fn(z))
    z_prime = reference.reparameterize(mu2, logvar2, torch.randn_like(mu2))
    z_pperm = argsort_permute_dims(z_prime.detach())
    d_loss = reference.discriminator_loss(d_logits_fn(z.detach()), d_logits_fn(z_pperm))
    return kl + vae_tc, d_loss


def stock_layers(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with torch's own layers, as 1Konny's code builds the networks: fastfvae's
    transposed convolutions (``fastfvae.layers.ConvTranspose2d``, torch's layer with faster CPU
    paths) become plain nn.ConvTranspose2d with the same parameters."""
    from fastfvae import layers

    for name, child in module.named_children():
        if isinstance(child, layers.ConvTranspose2d):
            plain = torch.nn.ConvTranspose2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                             child.padding, bias=child.bias is not None)
            plain.load_state_dict(child.state_dict())
            setattr(module, name, plain.to(child.weight.device))
        else:
            stock_layers(child)
    return module


class KonnyTrainStep:
    """One FactorVAE training step as 1Konny/FactorVAE's solver writes it (eager ops, per-column
    randperm), on given networks, for like-with-like comparisons with fastfvae.train.Trainer.

    encoder: x -> (mu, logvar); decoder: z -> Bernoulli logits; discriminator: z -> (B, 2).
    Adam 1e-4 (0.9, 0.999) for the VAE and 1e-4 (0.5, 0.9) for the discriminator, as the paper.
    1Konny's loop reuses D(z) from the VAE step in the discriminator loss after the VAE optimiser
    has stepped, which current PyTorch rejects (an in-place modification of saved tensors); here
    the discriminator sees ``z.detach()`` in a second call, and the VAE backward needs no
    ``retain_graph``. Everything else follows it: the VAE backward also fills D's gradients (then
    zeroed), z' of the second batch is computed with grad and detached after permute_dims. The
    networks run on torch's own layers (``stock_layers``), as in 1Konny's code.
    """

    def __init__(self, encoder, decoder, discriminator, gamma: float = 35.0, lr_vae: float = 1e-4,
                 lr_d: float = 1e-4):
        encoder, decoder, discriminator = stock_layers(encoder), stock_layers(decoder), stock_layers(discriminator)
        self.encoder, self.decoder, self.discriminator, self.gamma = encoder, decoder, discriminator, gamma
        vae_params = list(encoder.parameters()) + list(decoder.parameters())
        self.optim_vae = torch.optim.Adam(vae_params, lr=lr_vae, betas=(0.9, 0.999))
        self.optim_d = torch.optim.Adam(discriminator.parameters(), lr=lr_d, betas=(0.5, 0.9))

    def __call__(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x1, x2: (B, C, 64, 64) images in [0, 1]. Returns the detached (vae_loss, d_loss)."""
        batch = x1.size(0)
        mu, logvar = self.encoder(x1)
        z = konny_reparametrize(mu, logvar)
        x_recon = self.decoder(z)
        vae_recon_loss = F.binary_cross_entropy_with_logits(x_recon, x1, reduction="sum").div(batch)
        vae_kld = konny_kl_divergence(mu, logvar)
        d_z = self.discriminator(z)
        vae_tc_loss = konny_tc(d_z)
        vae_loss = vae_recon_loss + vae_kld + self.gamma * vae_tc_loss
        self.optim_vae.zero_grad()
        vae_loss.backward()
        self.optim_vae.step()

        mu2, logvar2 = self.encoder(x2)
        z_prime = konny_reparametrize(mu2, logvar2)
        z_pperm = konny_permute_dims(z_prime).detach()
        d_loss = konny_discriminator_loss(self.discriminator(z.detach()), self.discriminator(z_pperm))
        self.optim_d.zero_grad()
        d_loss.backward()
        self.optim_d.step()
        return vae_loss.detach(), d_loss.detach()
