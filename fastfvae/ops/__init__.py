"""The public ops, one module per op (DESIGN.md §2, §3): each holds its public function, its
validation and its autograd wiring, declared once through ``fastfvae.ops._register``.

The same stem names the op everywhere: ``fastfvae/ops/<op>.py``, ``fastfvae/backends/triton/<op>.py``,
``kernels/cpu/<op>.cpp``, ``kernels/cuda/<op>.cu``, ``tests/test_<op>.py``, ``bench/test_<op>.py``.
"""
from fastfvae.ops.discriminator_loss import discriminator_accuracy, discriminator_loss
from fastfvae.ops.gather_color_images import gather_color_images
from fastfvae.ops.gather_images import gather_images
from fastfvae.ops.log_qz import log_qz, log_qz_marginals
from fastfvae.ops.permute_dims import permute_dims
from fastfvae.ops.reparameterize_kl import reparameterize_kl
from fastfvae.ops.tc_loss import tc_loss

__all__ = [
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
