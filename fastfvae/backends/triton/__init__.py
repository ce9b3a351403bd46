"""The Triton backend: one module per op (kernels + launchers), same stems as everywhere else.

Serves CUDA tensors; CPU tensors only under TRITON_INTERPRET=1, which must be set before this
package is imported (triton.jit decides at decoration time whether a kernel is interpreted).
float64 inputs are computed in float64, other float dtypes in float32.
"""
from __future__ import annotations

import os

import torch

from fastfvae.backends import op_launchers

NAME = "triton"

try:
    import triton  # noqa: F401

    _IMPORT_ERROR = None
except ImportError as error:  # pragma: no cover - triton is a Linux dependency
    _IMPORT_ERROR = error

# The kernels below are interpreted (and can take CPU tensors) only if this was set when they
# were decorated, i.e. when this package was imported.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

_LIMITS = {}  # op -> its module's limits(dims), for the ops whose kernels have shape limits
if _IMPORT_ERROR is None:
    # One module per op of the registry (fastfvae/registry.py): its kernels and launchers.
    _LAUNCHERS, _LIMITS = op_launchers("fastfvae.backends.triton")
    globals().update(_LAUNCHERS)

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def availability() -> str | None:
    if _IMPORT_ERROR is not None:
        return f"triton cannot be imported ({_IMPORT_ERROR})"
    return None


def why_not(op: str, device: torch.device, dtype: torch.dtype) -> str | None:
    if f"{op}_forward" not in globals():
        return f"no Triton kernel for {op}"
    if dtype not in _FLOAT_DTYPES:
        return f"Triton kernels take float16, bfloat16, float32 or float64, not {dtype}"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return "CPU tensors need TRITON_INTERPRET=1 (Triton's interpreter); it is not set"
        if not _INTERPRETED:
            return (
                "TRITON_INTERPRET=1 was set after fastfvae.backends.triton was imported; "
                "set it before (the kernels were compiled for a GPU)"
            )
        return None
    return f"Triton kernels run on CUDA tensors (or CPU under TRITON_INTERPRET=1), not on {device.type}"


# Sizes the launchers cannot take (the dispatcher's per-call reasons, so "auto" falls back).
_INT32_MAX = 2**31 - 1


def limits(op: str, dims: dict) -> list[str]:
    """Every size of this call the Triton launchers cannot take (``dims``: the op's B, D, G, M,
    K): the row count every kernel shares, then the op's own module's limits."""
    found = []
    rows = max(dims.get("B", 0), dims.get("M", 0), dims.get("K", 0))
    if rows > _INT32_MAX:
        found.append(f"row offsets are computed in int32 (program_id * BLOCK): rows must be <= {_INT32_MAX}, got {rows}")
    op_limits = _LIMITS.get(op)
    return found + op_limits(dims) if op_limits is not None else found
