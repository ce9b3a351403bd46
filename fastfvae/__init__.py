"""fastfvae: fused, tested FactorVAE loss ops for PyTorch (see README.md and DESIGN.md)."""
from fastfvae.functional import (
    discriminator_accuracy,
    discriminator_loss,
    permute_dims,
    reparameterize_kl,
    tc_loss,
)

__version__ = "0.1.0"

__all__ = [
    "discriminator_accuracy",
    "discriminator_loss",
    "permute_dims",
    "reparameterize_kl",
    "tc_loss",
]
