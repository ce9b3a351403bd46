"""The seed every random op reads (DESIGN.md §8).

Eager calls draw it with ``torch.randint`` on the input's device, so ``torch.manual_seed``
governs the ops and nothing synchronises the host (the kernels read the seed from device
memory). Under ``torch.compile`` the same draw is the custom op ``fastfvae::draw_seed``, tagged
``nondeterministic_seeded`` (never folded, deduplicated or dropped): inductor replaces aten's
random ops with its own generator unless ``fallback_random=True``, which made compiled eps and
permutations differ from eager ones for the same ``manual_seed``. Our custom op is
opaque to it, so a compiled step draws the very seeds an eager step draws.
"""
from __future__ import annotations

import torch
from torch import Tensor

SEED_HIGH = 2**62


@torch.library.custom_op(
    "fastfvae::draw_seed_", mutates_args=("seed",), tags=(torch.Tag.nondeterministic_seeded,)
)
def _draw_seed_into(seed: Tensor) -> None:
    """Fill ``seed`` (int64 (1,)) in place. In place on a fresh ``torch.empty``: AOTAutograd's
    common-subexpression pass merges identical pure calls (it exempts aten's random ops only),
    and every ``empty`` is a distinct input it never merges, so each call keeps its own draw."""
    seed.copy_(torch.randint(SEED_HIGH, (1,), dtype=torch.int64, device=seed.device))


def draw_seed(device: torch.device) -> Tensor:
    """An int64 (1,) Philox seed from torch's generator for ``device``."""
    if torch.compiler.is_compiling():
        seed = torch.empty((1,), dtype=torch.int64, device=device)
        _draw_seed_into(seed)
        return seed
    return torch.randint(SEED_HIGH, (1,), dtype=torch.int64, device=device)
