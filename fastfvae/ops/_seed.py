"""The seed every random op reads (DESIGN.md §5)."""
from __future__ import annotations

import torch
from torch import Tensor

SEED_HIGH = 2**62


def draw_seed(device: torch.device) -> Tensor:
    """An int64 (1,) Philox seed from torch's generator for ``device``, so ``torch.manual_seed``
    governs the op and nothing synchronises the host (the kernels read it from device memory)."""
    return torch.randint(SEED_HIGH, (1,), dtype=torch.int64, device=device)
