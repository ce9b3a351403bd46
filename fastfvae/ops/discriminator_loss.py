"""discriminator_loss (and discriminator_accuracy): the FactorVAE discriminator's objective
(DESIGN.md §1, §2)."""
from __future__ import annotations

import torch
from torch import Tensor

from fastfvae import backends, reference
from fastfvae._checks import WIDE_DTYPES, as_columns, check_like, check_logits, promoted, to_compute_dtype
from fastfvae.ops._register import OpDeclaration, register


def _select(requested, d_real, d_perm):
    return backends.select("discriminator_loss", requested, d_real.device, d_real.dtype, lambda: {"B": d_real.shape[0]})


_op = register(OpDeclaration(
    name="discriminator_loss",
    forward_schema="(Tensor d_real, Tensor d_perm) -> Tensor",
    forward=lambda impl, d_real, d_perm: impl.discriminator_loss_forward(d_real, d_perm),
    forward_fake=lambda d_real, d_perm: d_real.new_empty(()),
    save=lambda args, outputs: args,  # (d_real, d_perm)
    backward_schema="(Tensor grad_loss, Tensor d_real, Tensor d_perm) -> (Tensor, Tensor)",
    backward=lambda impl, grad_loss, d_real, d_perm: impl.discriminator_loss_backward(grad_loss, d_real, d_perm),
    backward_fake=lambda grad_loss, d_real, d_perm: (d_real.new_empty(d_real.shape), d_perm.new_empty(d_perm.shape)),
    grad_inputs=(0, 1),
    select=_select,
    select_backward=lambda requested, grad_loss, d_real, d_perm: _select(requested, d_real, d_perm),
))


def _check_pair(d_real, d_perm) -> None:
    check_logits("d_real", d_real)
    check_logits("d_perm", d_perm)
    check_like("d_perm", d_perm, "d_real", d_real, same_dtype=False)


def discriminator_loss(d_real: Tensor, d_perm: Tensor, *, backend: str = "auto") -> Tensor:
    """The discriminator's loss on logits of z ~ q(z) (d_real) and of permute_dims(z') (d_perm).

    Both (B, 2): 0.5 * (CE(d_real, class 0) + CE(d_perm, class 1)), CE averaged over the batch.
    Both (B,) or (B, 1) (the logit of "from q(z)"):
    0.5 * (BCE(sigmoid(d_real), 1) + BCE(sigmoid(d_perm), 0)). Returns a scalar in the
    compute dtype (float32 for 16-bit logits, as torch's losses under autocast; DESIGN.md §4).
    Mixed float dtypes are promoted as torch's binary ops do.
    """
    _check_pair(d_real, d_perm)
    dtype = d_real.dtype
    if d_perm.dtype is not dtype or dtype not in WIDE_DTYPES:  # mixed or 16-bit: the slow path
        d_real, d_perm = promoted(d_real, d_perm)
        d_real, d_perm = to_compute_dtype(d_real), to_compute_dtype(d_perm)
    return _op(backend, as_columns(d_real), as_columns(d_perm))


def discriminator_accuracy(d_real: Tensor, d_perm: Tensor) -> Tensor:
    """Fraction of the 2B samples classified right (float32 scalar, no gradient)."""
    _check_pair(d_real, d_perm)
    with torch.no_grad():
        return reference.discriminator_accuracy(d_real, d_perm)
