"""The public ops (DESIGN.md §2), re-exported from ``fastfvae.ops`` where each op has its own
module (public function, validation, autograd wiring). Kept so ``fastfvae.functional.<op>``
imports keep working."""
from fastfvae.ops import (
    discriminator_accuracy,
    discriminator_loss,
    log_qz,
    log_qz_marginals,
    permute_dims,
    reparameterize_kl,
    tc_loss,
)

__all__ = [
    "discriminator_accuracy",
    "discriminator_loss",
    "log_qz",
    "log_qz_marginals",
    "permute_dims",
    "reparameterize_kl",
    "tc_loss",
]
