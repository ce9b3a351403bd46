"""Backends and dispatch (DESIGN.md §4).

A backend is a module with the same op names everywhere. Each one defines:

    NAME: str
    availability() -> str | None
        Why the backend cannot run at all on this machine (None when it can).
    why_not(op, device, dtype) -> str | None
        Why it cannot serve ``op`` for tensors of this device and dtype (None when it can).

and, per op, a forward and a backward launcher. The launchers receive validated tensors of
one device and one floating dtype, possibly NON-contiguous (user views; gradients expanded
with stride 0): a launcher reads strides or makes its own contiguous copy. They return fresh
contiguous tensors (never views of their inputs: they also back torch.library custom ops):

    reparameterize_kl_forward(mu, logvar, eps, seed, reduction) -> (z, kl)
        mu, logvar, eps: (B, D); eps None means "draw it": eps = philox_randn(seed, i*D + d).
        seed: int64 (1,) on the inputs' device. reduction: "mean" | "sum" | "none".
        z: (B, D) input dtype; kl: () or (B,) for "none", input dtype.
    reparameterize_kl_backward(grad_z, grad_kl, mu, logvar, eps, seed, reduction, need_grad_eps)
        -> (grad_mu, grad_logvar, grad_eps or None); grad_kl has kl's shape; eps is the forward's
        given eps, or None: the forward's draw, regenerated from seed (never stored).
        dmu = gz + gkl_i*mu; dlogvar = 0.5*gz*std*eps + 0.5*gkl_i*(exp(logvar) - 1);
        deps = gz*std, std = exp(logvar/2), gkl_i = grad_kl (sum), grad_kl/B (mean), grad_kl[i] (none).
    permute_dims_forward(z, seed, need_index) -> (out, index or None)
        z, out: (G, B, D); out[g, i, d] = z[g, P[g, i, d], d] with P = reference.philox_permutation.
        index: whatever the backward needs to invert P (backend-specific dtype), or None.
    permute_dims_backward(grad_out, index) -> grad_z    (G, B, D): grad_z[g, P, d] = grad_out
    tc_loss_forward(logits) -> tc ()                    logits (B, K), K in {1, 2}
    tc_loss_backward(grad_tc, logits) -> grad_logits    (B, K)
    discriminator_loss_forward(d_real, d_perm) -> loss ()          both (B, K)
    discriminator_loss_backward(grad_loss, d_real, d_perm) -> (grad_real, grad_perm)
    log_qz_forward(z, mu, logvar, dataset_size, method) -> (log_qz, log_qzj)
        z: (M, D) queries; mu, logvar: (K, D) mixture components; method "mws" | "mss".
        log_qz[i] = logsumexp_j (sum_d m[i,j,d] + w[i,j]) (M,), log_qzj[i,d] = logsumexp_j
        (m[i,j,d] + w[i,j]) (M, D), m = log N(z; mu, exp(logvar)), w = reference.log_qz_weights.
        Both outputs in the COMPUTE dtype (float32, float64 for float64): the backward recomputes
        softmaxes from them. Never materialises (M, K, D) or (M, K) (except the reference).
    log_qz_backward(grad_log_qz, grad_log_qzj, z, mu, logvar, log_qz, log_qzj, dataset_size, method)
        -> (grad_z (M, D), grad_mu (K, D), grad_logvar (K, D)) in the input dtype; grads in the
        compute dtype, any strides (grad_log_qzj is often a stride-0 expansion of (M, 1)).
        Formulas: reference.log_qz_backward.

Backends are imported on first use, so ``import fastfvae`` never pays for Triton.
"""
from __future__ import annotations

import importlib
import os

import torch

BACKEND_NAMES = ("native", "triton", "reference")

# backend="auto": the first backend in this order that can serve the op wins.
AUTO_ORDER = {
    "cuda": ("triton", "native", "reference"),
    "cpu": ("native", "reference"),
}

_modules: dict = {}
_choice_cache: dict = {}


def get_backend(name: str):
    """The backend module called ``name`` (imported on first use)."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend: expected one of {('auto',) + BACKEND_NAMES}, got {name!r}")
    module = _modules.get(name)
    if module is None:
        module = importlib.import_module(f"fastfvae.backends.{name}")
        _modules[name] = module
    return module


def reason_not_served(name: str, op: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why backend ``name`` cannot run ``op`` on (device, dtype); None when it can."""
    try:
        module = get_backend(name)
    except ImportError as error:  # e.g. triton not installed
        return f"cannot be imported ({error})"
    return module.availability() or module.why_not(op, device, dtype)


def reasons(op: str, device: torch.device, dtype: torch.dtype) -> dict[str, str | None]:
    """Every backend's reason for not serving ``op`` (None where it can), like xformers'
    ``not_supported_reasons``."""
    return {name: reason_not_served(name, op, device, dtype) for name in BACKEND_NAMES}


def select(op: str, requested: str, device: torch.device, dtype: torch.dtype):
    """The backend module that runs ``op`` for ``backend=requested`` on (device, dtype).

    "auto" honours FASTFVAE_BACKEND, then AUTO_ORDER. An explicit backend that cannot serve
    the input raises ValueError listing every backend's reason.
    """
    if requested == "auto":
        requested = os.environ.get("FASTFVAE_BACKEND", "auto") or "auto"
    key = (op, requested, device.type, dtype)
    module = _choice_cache.get(key)
    if module is not None:
        return module
    if requested == "auto":
        order = AUTO_ORDER.get(device.type, ("reference",))
        name = next(n for n in order if reason_not_served(n, op, device, dtype) is None or n == "reference")
    else:
        name = requested
        if reason_not_served(name, op, device, dtype) is not None:
            lines = "\n".join(
                f"  {n}: {r or 'can serve it'}" for n, r in reasons(op, device, dtype).items()
            )
            raise ValueError(
                f"backend={requested!r} cannot run {op} on a {device.type} tensor of {dtype}:\n{lines}"
            )
    module = get_backend(name)
    _choice_cache[key] = module
    return module


def clear_cache() -> None:
    """Forget cached choices (tests that change FASTFVAE_BACKEND or TRITON_INTERPRET)."""
    _choice_cache.clear()
