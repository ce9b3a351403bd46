"""Philox4x32-10, a bit-exact PyTorch port of Triton's ``tl.randint4x`` / ``tl.randn``
(``triton/language/random.py``): every backend draws its random numbers from this stream, so one
seed gives the same permutation and, to float rounding, the same eps everywhere (DESIGN.md §8).
"""
from __future__ import annotations

import torch

_PHILOX_KEY_A = 0x9E3779B9
_PHILOX_KEY_B = 0xBB67AE85
_PHILOX_ROUND_A = 0xD2511F53
_PHILOX_ROUND_B = 0xCD9E8D57
_MASK32 = 0xFFFFFFFF


def _mul_hi_lo(a: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # a, x < 2**32, so a*x < 2**64: the int64 product wraps but keeps every bit of the
    # unsigned product; shifting and masking recovers its high and low 32-bit halves.
    p = x * a
    return (p >> 32) & _MASK32, p & _MASK32


def philox_randint4x(seed: int | torch.Tensor, offsets: torch.Tensor, n_rounds: int = 10):
    """Four streams of uint32 values (held in int64 tensors) for counters ``offsets``.

    Bit-identical to ``tl.randint4x(seed, offsets)`` with int64 offsets.
    seed: Python int, or an int64 tensor of one element on the offsets' device (read on the
    device, so nothing synchronises), in [0, 2**63).
    offsets: int64 tensor of any shape (global element indices).
    """
    if isinstance(seed, torch.Tensor):
        seed = seed.reshape(()).to(torch.int64)
    offsets = offsets.to(torch.int64)
    c0 = offsets & _MASK32
    c1 = (offsets >> 32) & _MASK32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(n_rounds):
        hi_b, lo_b = _mul_hi_lo(_PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _PHILOX_KEY_A) & _MASK32
        k1 = (k1 + _PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def uint32_to_uniform(x: torch.Tensor) -> torch.Tensor:
    """Triton's ``uint_to_uniform_float`` for 32-bit input: float32 in [0, 1)."""
    signed = torch.where(x >= 2**31, x - 2**32, x)  # bitcast uint32 -> int32
    signed = torch.where(signed < 0, -signed - 1, signed)
    return signed.to(torch.float32) * 4.6566127342e-10


def philox_randn(seed: int | torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """float32 standard normals, as ``tl.randn(seed, offsets)`` (Box-Muller, first output)."""
    i1, i2, _, _ = philox_randint4x(seed, offsets)
    u1 = torch.clamp_min(uint32_to_uniform(i1), 1.0e-7)
    theta = 6.283185307179586 * uint32_to_uniform(i2)
    radius = torch.sqrt(-2.0 * torch.log(u1))
    return radius * torch.cos(theta)


def philox_permutation(seed: int | torch.Tensor, groups: int, batch: int, dim: int, device=None) -> torch.Tensor:
    """The permutation every backend draws for permute_dims: int64 (G, B, D) source rows.

    For element (g, i, d) the counter is its global index ``(g*B + i)*D + d``; the sort key
    is the 63-bit number ``(c0 & 0x7fffffff) << 32 | c1`` with its low ``max(1, bit_length(B-1))`` bits
    replaced by the row index i. Sorting the keys of one column (all distinct, because the low
    bits differ) gives a uniformly random order of its rows; ``index[g, i, d]`` is the row
    whose key ranks i-th, and ``out[g, i, d] = z[g, index[g, i, d], d]``.
    """
    if device is None:
        device = seed.device if isinstance(seed, torch.Tensor) else torch.device("cpu")
    offsets = torch.arange(groups * batch * dim, dtype=torch.int64, device=device)
    offsets = offsets.reshape(groups, batch, dim)
    c0, c1, _, _ = philox_randint4x(seed, offsets)
    row_bits = max(1, (batch - 1).bit_length())
    row_mask = (1 << row_bits) - 1
    rows = torch.arange(batch, dtype=torch.int64, device=device).view(1, batch, 1)
    keys = (((c0 & 0x7FFFFFFF) << 32) | c1) & ~row_mask | rows
    return torch.sort(keys, dim=1).values & row_mask
