"""tc_loss: the VAE's total-correlation estimate from discriminator logits (DESIGN.md §1, §2)."""
from __future__ import annotations

from torch import Tensor

from fastfvae import backends
from fastfvae._checks import as_columns, check_logits, to_compute_dtype
from fastfvae.ops._register import OpDeclaration, register


def _select(requested, logits):
    return backends.select("tc_loss", requested, logits.device, logits.dtype, lambda: {"B": logits.shape[0]})


_op = register(OpDeclaration(
    name="tc_loss",
    forward_schema="(Tensor logits) -> Tensor",
    forward=lambda impl, logits: impl.tc_loss_forward(logits),
    forward_fake=lambda logits: logits.new_empty(()),
    save=lambda args, outputs: args,  # (logits,)
    backward_schema="(Tensor grad_tc, Tensor logits) -> Tensor",
    backward=lambda impl, grad_tc, logits: impl.tc_loss_backward(grad_tc, logits),
    backward_fake=lambda grad_tc, logits: logits.new_empty(logits.shape),
    grad_inputs=(0,),
    select=_select,
    select_backward=lambda requested, grad_tc, logits: _select(requested, logits),
))


def tc_loss(d_logits: Tensor, *, backend: str = "auto") -> Tensor:
    """The VAE's total-correlation estimate from discriminator logits on z ~ q(z).

    d_logits: (B, 2) -> mean_i (l_i0 - l_i1), the density-ratio trick with class 0 = "from
    q(z)"; (B,) or (B, 1) -> mean_i l_i, the logit of "from q(z)". Returns a scalar in the
    compute dtype (float32 for 16-bit logits; DESIGN.md §4).
    """
    check_logits("d_logits", d_logits)
    return _op(backend, as_columns(to_compute_dtype(d_logits)))
