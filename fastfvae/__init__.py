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
from fastfvae.ops import *  # noqa: F401,F403 - every op of the registry (fastfvae/registry.py)
from fastfvae import functional  # noqa: F401 - the old import path, kept as an attribute
from fastfvae import ops as _ops

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
    # the ops (fastfvae/ops/, one module per op of fastfvae/registry.py)
    *_ops.__all__,
]
