"""The Triton backend: one module per op (kernels + launchers), same stems as everywhere else.

Serves CUDA tensors; CPU tensors only under TRITON_INTERPRET=1, which must be set before this
package is imported (triton.jit decides at decoration time whether a kernel is interpreted).
float64 inputs are computed in float64, other float dtypes in float32.
"""
from __future__ import annotations

import os

import torch

NAME = "triton"

try:
    import triton  # noqa: F401

    _IMPORT_ERROR = None
except ImportError as error:  # pragma: no cover - triton is a Linux dependency
    _IMPORT_ERROR = error

# The kernels below are interpreted (and can take CPU tensors) only if this was set when they
# were decorated, i.e. when this package was imported.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

if _IMPORT_ERROR is None:
    from fastfvae.backends.triton.discriminator_loss import discriminator_loss_backward, discriminator_loss_forward
    from fastfvae.backends.triton.gather_images import gather_images_forward
    from fastfvae.backends.triton.log_qz import log_qz_backward, log_qz_forward
    from fastfvae.backends.triton.permute_dims import permute_dims_backward, permute_dims_forward
    from fastfvae.backends.triton.reparameterize_kl import reparameterize_kl_backward, reparameterize_kl_forward
    from fastfvae.backends.triton.tc_loss import tc_loss_backward, tc_loss_forward

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
_GRID_AXIS_MAX = 65535  # CUDA grid axes 1 and 2


def limits(op: str, dims: dict) -> list[str]:
    """Every size of this call the Triton launchers cannot take (``dims``: the op's B, D, G, M, K)."""
    from fastfvae.backends.triton import log_qz, permute_dims, reparameterize_kl

    log_qz_max_d = log_qz.MAX_BLOCK_D  # one tile spans all of D
    permute_tile_d = permute_dims.TILE_D  # columns per program on grid axis 1
    backward_tile_d = reparameterize_kl.MAX_BLOCK_D  # the reparameterize_kl backward's columns per program
    found = []
    rows = max(dims.get("B", 0), dims.get("M", 0), dims.get("K", 0))
    if rows > _INT32_MAX:
        found.append(f"row offsets are computed in int32 (program_id * BLOCK): rows must be <= {_INT32_MAX}, got {rows}")
    dim = dims.get("D", 0)
    if op == "log_qz" and dim > log_qz_max_d:
        found.append(f"the log_qz kernels hold all of D in one tile: D must be <= {log_qz_max_d}, got {dim}")
    if op == "permute_dims":
        if dims.get("G", 1) > _GRID_AXIS_MAX:
            found.append(f"groups run on CUDA grid axis 2: G must be <= {_GRID_AXIS_MAX}, got {dims['G']}")
        if -(-dim // permute_tile_d) > _GRID_AXIS_MAX:
            found.append(f"column tiles run on CUDA grid axis 1: D must be <= {_GRID_AXIS_MAX * permute_tile_d}, got {dim}")
    if op == "reparameterize_kl" and -(-dim // backward_tile_d) > _GRID_AXIS_MAX:
        found.append(
            f"the backward's column tiles run on CUDA grid axis 1: D must be <= "
            f"{_GRID_AXIS_MAX * backward_tile_d}, got {dim}"
        )
    return found
