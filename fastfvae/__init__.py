"""fastfvae: fused, tested FactorVAE loss ops for PyTorch (see README.md and DESIGN.md)."""
from fastfvae import losses
from fastfvae.losses import (
    AnnealedVAELoss,
    BetaTCVAELoss,
    BetaVAELoss,
    DIPVAELoss,
    DiscriminatorLoss,
    FactorVAELoss,
)
from fastfvae.ops import (
    discriminator_accuracy,
    discriminator_loss,
    gather_color_images,
    gather_images,
    log_qz,
    log_qz_marginals,
    permute_dims,
    reparameterize_kl,
    tc_loss,
)

__version__ = "0.1.0"

__all__ = [
    "losses",
    # the loss modules (fastfvae.losses), next to the ops they are built on
    "AnnealedVAELoss",
    "BetaTCVAELoss",
    "BetaVAELoss",
    "DIPVAELoss",
    "DiscriminatorLoss",
    "FactorVAELoss",
    "discriminator_accuracy",
    "discriminator_loss",
    "gather_color_images",
    "gather_images",
    "log_qz",
    "log_qz_marginals",
    "permute_dims",
    "reparameterize_kl",
    "tc_loss",
]
