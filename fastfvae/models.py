"""The FactorVAE paper's dSprites networks (Kim & Mnih 2018, Appendix, Table 1) and its
discriminator.

Sources of each choice (where public implementations differ):

- Encoder: 4x4 stride-2 convolutions with 32, 32, 64, 64 channels and ReLU, FC 128 + ReLU, FC to
  2*z_dim (mean, log-variance) -- the paper's table. Padding 1, so 64 -> 32 -> 16 -> 8 -> 4
  (as 1Konny/FactorVAE and disentanglement_lib's "same" padding). 1Konny writes the FCs as
  convolutions; the maths is the same.
- Decoder: FC 128 + ReLU, FC 4*4*64 + ReLU, then 4x4 stride-2 transposed convolutions with 64,
  32, 32 channels and ReLU and a last one to C channels -- the paper's table (disentanglement_lib
  builds the same). The output is Bernoulli logits (one per pixel and channel).
- Discriminator: an MLP of 1000-unit layers with LeakyReLU(0.2) and 2 output logits
  (class 0 = "from q(z)", class 1 = "from the product of marginals", as fastfvae's losses).
  Default depth: 6 hidden layers, as disentanglement_lib's ``fc_discriminator`` (d1..d6, TF's
  leaky_relu slope 0.2) and 1Konny/FactorVAE (Linear(z, 1000) plus five 1000x1000 layers);
  YannDubs/disentangling-vae uses 5 hidden layers (6 linear layers in all): pass ``depth=5``.
- Initialisation: PyTorch's defaults (the paper does not specify one).

3-channel data (e.g. 3D Shapes, colour dSprites) use the same networks with ``channels=3``.

Implementation (same values as torch's stock layers): the decoder's transposed convolutions are
``fastfvae.layers.ConvTranspose2d`` (an nn.ConvTranspose2d with faster CPU paths), and the
ReLUs work in place (no convolution or linear layer reads its output in its backward).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from fastfvae import layers, ops
from fastfvae._checks import check_positive_int


class Encoder(nn.Module):
    """(B, C, 64, 64) float images -> (mu, logvar), each (B, z_dim)."""

    def __init__(self, z_dim: int = 10, channels: int = 1):
        super().__init__()
        self.z_dim = z_dim
        self.convs = nn.Sequential(
            nn.Conv2d(channels, 32, 4, 2, 1), nn.ReLU(inplace=True),   # 32x32
            nn.Conv2d(32, 32, 4, 2, 1), nn.ReLU(inplace=True),         # 16x16
            nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(inplace=True),         # 8x8
            nn.Conv2d(64, 64, 4, 2, 1), nn.ReLU(inplace=True),         # 4x4
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(inplace=True), nn.Linear(128, 2 * z_dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        stats = self.fc(self.convs(x))
        return stats[:, : self.z_dim], stats[:, self.z_dim:]


class Decoder(nn.Module):
    """(B, z_dim) -> (B, C, 64, 64) Bernoulli logits."""

    def __init__(self, z_dim: int = 10, channels: int = 1):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(z_dim, 128), nn.ReLU(inplace=True),
            nn.Linear(128, 64 * 4 * 4), nn.ReLU(inplace=True),
            nn.Unflatten(1, (64, 4, 4)),
        )
        self.deconvs = nn.Sequential(
            layers.ConvTranspose2d(64, 64, 4, 2, 1), nn.ReLU(inplace=True),   # 8x8
            layers.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(inplace=True),   # 16x16
            layers.ConvTranspose2d(32, 32, 4, 2, 1), nn.ReLU(inplace=True),   # 32x32
            layers.ConvTranspose2d(32, channels, 4, 2, 1),        # 64x64
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.deconvs(self.fc(z))


def _at_least_float32(t: Tensor) -> Tensor:
    """16-bit tensors as float32 (autocast's outputs), float32/float64 as they are."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class VAEOutput(NamedTuple):
    x_recon: Tensor  # (B, C, 64, 64) logits
    mu: Tensor       # (B, z_dim)
    logvar: Tensor   # (B, z_dim)
    z: Tensor        # (B, z_dim) reparameterised sample
    kl: Tensor       # () KL(q(z|x) || N(0, I)) summed over dims, averaged over the batch


class VAE(nn.Module):
    """Encoder + decoder; forward samples z and its KL with the fused ``reparameterize_kl``."""

    def __init__(self, z_dim: int = 10, channels: int = 1, backend: str = "auto"):
        super().__init__()
        z_dim = check_positive_int("z_dim", z_dim)
        if channels not in (1, 3):
            raise ValueError(f"channels: expected 1 or 3, got {channels!r}")
        self.z_dim, self.channels, self.backend = z_dim, channels, backend
        self.encoder = Encoder(z_dim, channels)
        self.decoder = Decoder(z_dim, channels)

    def forward(self, x: Tensor) -> VAEOutput:
        """x: (B, C, 64, 64) float in [0, 1]."""
        mu, logvar = self.encoder(x)
        # The fused op runs in float32 even under bf16 autocast (it is not an autocast op);
        # a float64 model stays float64.
        z, kl = ops.reparameterize_kl(_at_least_float32(mu), _at_least_float32(logvar), backend=self.backend)
        return VAEOutput(self.decoder(z), mu, logvar, z, kl)

    def sample_z(self, x: Tensor) -> Tensor:
        """A reparameterised sample of q(z|x) (used for the discriminator's second batch)."""
        mu, logvar = self.encoder(x)
        z, _ = ops.reparameterize_kl(_at_least_float32(mu), _at_least_float32(logvar), backend=self.backend)
        return z


class Discriminator(nn.Module):
    """(B, z_dim) -> (B, 2) logits; ``depth`` hidden layers of ``width`` units, LeakyReLU(0.2)."""

    def __init__(self, z_dim: int = 10, depth: int = 6, width: int = 1000):
        super().__init__()
        depth = check_positive_int("depth", depth)
        layers: list[nn.Module] = []
        size = z_dim
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.LeakyReLU(0.2)]
            size = width
        layers.append(nn.Linear(size, 2))
        self.net = nn.Sequential(*layers)
        self.z_dim, self.depth, self.width = z_dim, depth, width

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
