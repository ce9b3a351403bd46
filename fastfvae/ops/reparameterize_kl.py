"""reparameterize_kl: the reparameterised sample and its Gaussian KL to N(0, I), fused
(DESIGN.md §1, §2, §8)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fastfvae import reference
from fastfvae._checks import check_choice, check_float_tensor, check_like, promoted
from fastfvae.ops._register import OpDeclaration, needs_graph, register
from fastfvae.ops._seed import draw_seed

__all__ = ["reparameterize_kl"]  # the public functions (fastfvae/registry.py)


# Where the backward finds eps: drawn (regenerate it from the seed), given, given and needing a gradient.
_DRAWN, _GIVEN, _GIVEN_NEEDS_GRAD = "drawn", "given", "given_needs_grad"


def _save(args, outputs):
    # The noise's source, not z: the backward needs std*eps exactly (rebuilding it as z - mu loses
    # it to z's rounding). A given eps is saved; a drawn one is regenerated from the
    # forward's seed. One tensor slot holds either (``eps_mode`` says which), so the backward's
    # schema has no optional tensor and no placeholder.
    mu, logvar, eps, seed, reduction = args
    if eps is None:
        return mu, logvar, seed, reduction, _DRAWN
    return mu, logvar, eps, reduction, (_GIVEN_NEEDS_GRAD if eps.requires_grad else _GIVEN)


def _backward(impl, grad_z, grad_kl, mu, logvar, eps_or_seed, reduction, eps_mode):
    eps, seed = (None, eps_or_seed) if eps_mode == _DRAWN else (eps_or_seed, None)
    grad_mu, grad_logvar, grad_eps = impl.reparameterize_kl_backward(
        grad_z, grad_kl, mu, logvar, eps, seed, reduction, eps_mode == _GIVEN_NEEDS_GRAD
    )
    # A custom op cannot return None: an empty placeholder stands for "eps needs no gradient".
    return grad_mu, grad_logvar, grad_eps if grad_eps is not None else mu.new_empty((0,))


def _backward_fake(grad_z, grad_kl, mu, logvar, eps_or_seed, reduction, eps_mode):
    grad_eps_shape = mu.shape if eps_mode == _GIVEN_NEEDS_GRAD else (0,)
    return mu.new_empty(mu.shape), mu.new_empty(mu.shape), mu.new_empty(grad_eps_shape)


_op = register(OpDeclaration(
    name="reparameterize_kl",
    # mu, logvar, eps: (B, D); seed: int64 (1,), unused when eps is given -> z (B, D), kl () or (B,)
    forward_schema="(Tensor mu, Tensor logvar, Tensor? eps, Tensor seed, str reduction) -> (Tensor, Tensor)",
    forward=lambda impl, mu, logvar, eps, seed, reduction: impl.reparameterize_kl_forward(
        mu, logvar, eps, seed, reduction
    ),
    forward_fake=lambda mu, logvar, eps, seed, reduction: (
        mu.new_empty(mu.shape), mu.new_empty((mu.shape[0],) if reduction == "none" else ())
    ),
    num_outputs=2,
    save=_save,
    backward_schema=(
        "(Tensor grad_z, Tensor grad_kl, Tensor mu, Tensor logvar, Tensor eps_or_seed, str reduction, "
        "str eps_mode) -> (Tensor, Tensor, Tensor)"
    ),
    backward=_backward,
    backward_fake=_backward_fake,
    grad_inputs=(0, 1, 2),
    dims={"mu": "B D"},
))


# Below this many elements a regenerated eps costs less than ~20 us, about what the separate draw's
# extra dispatch and call cost: small batches keep regenerating.
_KEEP_NOISE_MIN_ELEMENTS = 8192


def _keeps_noise(requested: str, mu: Tensor, logvar: Tensor) -> bool:
    """Whether this call keeps its drawn eps for the backward instead of regenerating it there.

    Chosen per device by measurement (bench/roofline.py, the "stored eps" rows): on the CPU a
    Philox normal costs ~2 ns a thread (500 M/s, AMD EPYC, AVX-512), while keeping eps costs one
    B x D write and read (~0.4 ns an element): regenerating makes the backward 3x slower (16384 x
    64, one thread: 3.35 against 1.12 ms) for a forward that costs the same either way. So the eager
    CPU path with the native backend draws eps in its own pass (the kernel's own code, the same
    numbers) and gives it to the kernel; the backward reads it. CUDA keeps regenerating until a
    GPU measurement says otherwise; compiled and torch.func paths keep the seed (one op, no
    helper call inside a trace)."""
    if mu.device.type != "cpu" or torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return False
    if not needs_graph((mu, logvar)):
        return False  # no backward: nothing to keep
    if mu.numel() < _KEEP_NOISE_MIN_ELEMENTS:
        return False  # the draw costs less than the extra call
    impl = _op._select(requested, mu)  # the backend the call will run (its dims read mu)
    return getattr(impl, "NAME", None) == "native" and impl.philox_fill_available() is None


def reparameterize_kl(
    mu: Tensor, logvar: Tensor, *, eps: Optional[Tensor] = None, reduction: str = "mean",
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Fused reparameterised sample and Gaussian KL to N(0, I).

    mu, logvar: (B, D) floating, same dtype and device. eps: optional (B, D) noise; when None
    it is drawn inside the kernel from torch's generator (Philox, DESIGN.md §8); when given, no
    seed is drawn (the generator is not advanced).
    Returns z = mu + exp(logvar/2) * eps, shape (B, D), in the inputs' dtype, and
    kl = reduce_i 0.5 * sum_d (mu^2 + exp(logvar) - logvar - 1): () for "mean"/"sum", (B,) for "none",
    in the compute dtype (float32 for 16-bit inputs, as autocast returns reductions; DESIGN.md §5).
    Mixed float dtypes are promoted as torch's binary ops do.
    Differentiable in mu, logvar (and eps when given).
    """
    check_float_tensor("mu", mu, (2,))
    check_float_tensor("logvar", logvar, (2,))
    check_like("logvar", logvar, "mu", mu, same_dtype=False)
    if eps is not None:
        check_float_tensor("eps", eps, (2,))
        check_like("eps", eps, "mu", mu, same_dtype=False)
    check_choice("reduction", reduction, reference.REDUCTIONS)
    mu, logvar, eps = promoted(mu, logvar, eps)
    # Given eps, nothing is drawn (the user's generator is not advanced); the launchers still
    # take a seed pointer, so they get a placeholder.
    seed = draw_seed(mu.device) if eps is None else torch.zeros((1,), dtype=torch.int64, device=mu.device)
    if eps is None and _keeps_noise(backend, mu, logvar):
        # The same eps the kernel would draw (bit for bit), drawn in its own pass and given: the
        # backward then reads it instead of drawing it again.
        from fastfvae.backends import native

        eps = native.reparameterize_kl_noise(seed, *mu.shape)
        eps = eps if mu.dtype in (torch.float32, torch.bfloat16, torch.float16) else eps.to(mu.dtype)
    if mu.dtype in (torch.float32, torch.float64):
        return _op(backend, mu, logvar, eps, seed, reduction)
    # 16-bit: the kernels would widen on load and round z once on store; doing the widening
    # here gives the same z and a float32 KL (the launchers write kl in the input dtype).
    z, kl = _op(backend, mu.float(), logvar.float(), None if eps is None else eps.float(), seed, reduction)
    return z.to(mu.dtype), kl
