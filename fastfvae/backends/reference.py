"""The reference backend: fastfvae.reference in eager PyTorch, serving every device and dtype.

Each op's launchers live beside its maths in ``fastfvae/reference/<op>.py``; this module serves
them under the backend protocol's names. It draws its randomness from the same Philox stream as
the kernels (reference.philox_*), so it is the fallback of ``backend="auto"`` and the yardstick of
the cross-backend RNG tests. Half types are computed in float32 and rounded once, as the kernels do.
"""
from __future__ import annotations

import torch

from fastfvae.backends import op_launchers

NAME = "reference"


def availability() -> str | None:
    return None


def why_not(op: str, device: torch.device, dtype: torch.dtype) -> str | None:
    return None


# <op>_forward / <op>_backward of every op (a forward-only op has no backward); no shape limits.
globals().update(op_launchers("fastfvae.reference")[0])
