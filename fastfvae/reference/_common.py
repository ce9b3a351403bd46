"""What every op's reference shares: the reductions and the compute dtype rule."""
from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum", "none")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype every backend computes in for inputs of ``dtype`` (the one place this rule is
    spelled, DESIGN.md §5): float64 in float64, the others (float32 and the 16-bit types, which
    are widened on load and rounded once on store) in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce per-sample values (B,) by 'mean', 'sum' or 'none'."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")

