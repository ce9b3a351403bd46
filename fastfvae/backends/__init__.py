"""Backends and dispatch (DESIGN.md §5).

A backend is a module with the same op names everywhere. Each one defines:

    NAME: str
    availability() -> str | None
        Why the backend cannot run at all on this machine (None when it can).
    why_not(op, device, dtype) -> str | None
        Why it cannot serve ``op`` for tensors of this device and dtype (None when it can).
    limits(op, dims) -> list[str]          (optional)
        Every shape limit the call's sizes break, e.g. the Triton log_qz's D <= 1024. ``dims``
        maps the op's size names (B, D, K, G, M) to ints; it is None when sizes are unknown.

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
        z, out: (G, B, D), or (B, D) for G = 1 (``grouped_sizes`` reads both);
        out[g, i, d] = z[g, P[g, i, d], d] with P = reference.philox_permutation.
        index: whatever the backward needs to invert P (backend-specific dtype), or None.
    permute_dims_backward(grad_out, index) -> grad_z    z's shape: grad_z[g, P, d] = grad_out
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

from fastfvae.registry import op_modules

BACKEND_NAMES = ("native", "triton", "reference")
ENVIRONMENT_VARIABLE = "FASTFVAE_BACKEND"

# backend="auto": the first backend in this order that can serve the call wins.
AUTO_ORDER = {
    "cuda": ("triton", "native", "reference"),
    "cpu": ("native", "reference"),
}

_modules: dict = {}
# (op, requested, device as given, dtype) -> (module, its limits function or None) for the backends
# that serve that device and dtype, in order (select's cache)
_candidates_cache: dict = {}


def grouped_sizes(t: torch.Tensor) -> tuple[int, int, int, int, int, int]:
    """(G, B, D, stride_g, stride_b, stride_d) of a (G, B, D) tensor, or of a (B, D) one as one
    group: the ops that take both hand the 2-D form to their launchers as it is, because an
    unsqueeze before the op and a view after it cost two autograd nodes a call."""
    if t.dim() == 3:
        return (*t.shape, *t.stride())
    batch, dim = t.shape
    stride_b, stride_d = t.stride()
    return 1, batch, dim, batch * dim, stride_b, stride_d


def get_backend(name: str):
    """The backend module called ``name`` (imported on first use)."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend: expected one of {('auto',) + BACKEND_NAMES}, got {name!r}")
    module = _modules.get(name)
    if module is None:
        module = importlib.import_module(f"fastfvae.backends.{name}")
        _modules[name] = module
    return module


def op_launchers(package: str) -> tuple[dict, dict]:
    """The launchers of a backend package's per-op modules (``<package>.<op>`` for every op of
    fastfvae/registry.py): ``<op>_forward`` / ``<op>_backward`` by name (a forward-only op has no
    backward), and ``{op: limits}`` for the modules that declare shape ``limits(dims)``."""
    launchers, limits = {}, {}
    for op, module in op_modules(package).items():
        launchers.update({name: getattr(module, name) for name in (f"{op}_forward", f"{op}_backward")
                          if hasattr(module, name)})
        if hasattr(module, "limits"):
            limits[op] = module.limits
    return launchers, limits


def _as_device(device) -> torch.device:
    """Accept "cpu", "cuda:1" or a torch.device, as the ops do."""
    if isinstance(device, torch.device):
        return device
    if isinstance(device, str):
        return torch.device(device)
    raise TypeError(f"device: expected a torch.device or a string such as 'cpu', got {type(device).__name__}")


def _static_reasons(name: str, op: str, device: torch.device, dtype: torch.dtype) -> list[str]:
    """Why backend ``name`` cannot run ``op`` on (device, dtype) at any size."""
    try:
        module = get_backend(name)
    except ImportError as error:  # e.g. triton not installed
        return [f"cannot be imported ({error})"]
    found = []
    for reason in (module.availability(), module.why_not(op, device, dtype)):
        if reason and reason not in found:  # a missing library is both unavailable and no server
            found.append(reason)
    return found


def _limit_reasons(module, op: str, dims) -> list[str]:
    limits = getattr(module, "limits", None)
    return limits(op, dims) if limits is not None and dims is not None else []


def _limits_for(module, op: str):
    """The backend's ``limits`` when it has size limits for ``op`` (its LIMITED_OPS), else None,
    so the common call skips it."""
    limits = getattr(module, "limits", None)
    if limits is None or op not in getattr(module, "LIMITED_OPS", (op,)):
        return None
    return limits


def not_supported_reasons(name: str, op: str, device, dtype: torch.dtype, dims=None) -> list[str]:
    """EVERY reason backend ``name`` cannot run this call (empty when it can), like xformers'
    ``not_supported_reasons``: availability, device, dtype, and shape limits when ``dims`` is given."""
    device = _as_device(device)
    found = _static_reasons(name, op, device, dtype)
    if not found:
        found = _limit_reasons(get_backend(name), op, dims)
    return found


def reason_not_served(name: str, op: str, device, dtype: torch.dtype, dims=None) -> str | None:
    """Why backend ``name`` cannot run ``op`` on (device, dtype[, dims]); None when it can."""
    found = not_supported_reasons(name, op, device, dtype, dims)
    return "; ".join(found) if found else None


def reasons(op: str, device, dtype: torch.dtype, dims=None) -> dict[str, str | None]:
    """Every backend's reasons for not serving ``op`` (None where it can). ``device`` may be a
    string ("cpu", "cuda:0"); ``dims`` optionally adds the shape limits of one call."""
    return {name: reason_not_served(name, op, device, dtype, dims) for name in BACKEND_NAMES}


def requested_from_environment() -> str:
    """FASTFVAE_BACKEND's backend name, or "auto" when unset or empty."""
    return _checked_request(os.environ.get(ENVIRONMENT_VARIABLE) or "auto")


def _candidates(op: str, requested: str, device: torch.device, dtype: torch.dtype) -> tuple:
    """(module, its limits or None) of the backends that serve (device, dtype), in the order "auto"
    tries them; for an explicit request, that one backend (or () when it cannot serve them).
    ``select`` caches the answer."""
    names = AUTO_ORDER.get(device.type, ("reference",)) if requested == "auto" else (requested,)
    modules = [get_backend(n) for n in names if not _static_reasons(n, op, device, dtype)]
    return tuple((m, _limits_for(m, op)) for m in modules)


def select(op: str, requested: str, device, dtype: torch.dtype, dims=None):
    """The backend module that runs ``op`` for ``backend=requested`` on this call.

    "auto" honours FASTFVAE_BACKEND, then takes the first backend of AUTO_ORDER that can serve
    the device, dtype and sizes (``dims``: a dict, or a function returning it, called only when
    a candidate backend has size limits for ``op``), falling back to the next one otherwise. An explicit
    backend that cannot serve the call raises ValueError listing every backend's reasons.
    Every eager op call runs this: the common case is one environment read and one dict lookup.
    """
    if requested == "auto":
        requested = os.environ.get(ENVIRONMENT_VARIABLE) or "auto"
    # Keyed by the device as given (a torch.device hashes without building its type string).
    found = _candidates_cache.get((op, requested, device, dtype))
    if found is None:
        device = _as_device(device)
        found = _candidates(op, _checked_request(requested), device, dtype)
        _candidates_cache[(op, requested, device, dtype)] = found
    for module, limits in found:
        if limits is None or dims is None or not limits(op, dims() if callable(dims) else dims):
            return module
    if requested == "auto":  # the reference serves everything; only reached for exotic devices
        return get_backend("reference")
    dims = dims() if callable(dims) else dims
    device = _as_device(device)
    lines = "\n".join(f"  {n}: {r or 'can serve it'}" for n, r in reasons(op, device, dtype, dims).items())
    raise ValueError(f"backend={requested!r} cannot run {op} on a {device.type} tensor of {dtype}:\n{lines}")


def _checked_request(requested: str) -> str:
    """``requested`` (from backend= or FASTFVAE_BACKEND) is a backend name or "auto"."""
    if requested != "auto" and requested not in BACKEND_NAMES:
        if os.environ.get(ENVIRONMENT_VARIABLE) == requested:
            raise ValueError(
                f"{ENVIRONMENT_VARIABLE}: expected one of {('auto',) + BACKEND_NAMES} (or unset), got {requested!r}"
            )
        raise ValueError(f"backend: expected one of {('auto',) + BACKEND_NAMES}, got {requested!r}")
    return requested


def clear_cache() -> None:
    """Forget cached choices (tests that change FASTFVAE_BACKEND or TRITON_INTERPRET)."""
    _candidates_cache.clear()
