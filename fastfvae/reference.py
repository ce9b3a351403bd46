"""Pure-PyTorch reference implementation: the definition of correct.

Everything here is written for readability, works in float64, and takes its randomness
explicitly (``eps`` for the reparameterised sample, ``index`` for permute_dims) so that
tests can compare kernels exactly. The Philox generator below is a bit-exact PyTorch port
of Triton's ``tl.randint4x`` / ``tl.randn`` (``triton/language/random.py``); every backend
draws its random numbers from the same stream, so one seed gives the same permutation and,
to float rounding, the same eps everywhere (DESIGN.md §5).

Shapes: B = batch, D = latent size, G = independent groups, K = discriminator logits (1 or 2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

REDUCTIONS = ("mean", "sum", "none")

# ---------------------------------------------------------------------------------------------
# Philox4x32-10, as in triton/language/random.py
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# The FactorVAE loss pieces (DESIGN.md §1)
# ---------------------------------------------------------------------------------------------
def reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce per-sample values (B,) by 'mean', 'sum' or 'none'."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * eps; all (B, D)."""
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over D, then reduced over B.

    kl_i = 0.5 * sum_d (mu^2 + exp(logvar) - logvar - 1); returns () or (B,) for 'none'.
    """
    per_sample = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(dim=-1)
    return reduce(per_sample, reduction)


def reparameterize_kl(mu, logvar, eps, reduction: str = "mean"):
    """(z, kl) with the eps given: the fused op's definition."""
    return reparameterize(mu, logvar, eps), gaussian_kl(mu, logvar, reduction)


def permute_dims(z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Paper, Algorithm 1, with the permutations given.

    z: (B, D) or (G, B, D); index: int64 of the same shape, each column of each group a
    permutation of range(B). out[..., i, d] = z[..., index[..., i, d], d].
    """
    return torch.gather(z, -2, index)


def tc_loss(d_logits: torch.Tensor) -> torch.Tensor:
    """The VAE's total-correlation term from discriminator logits on z ~ q(z).

    (B, 2) logits: mean_i (l_i0 - l_i1) = mean log D/(1-D) (density-ratio trick, class 0 is
    "from q(z)"); (B,) or (B, 1) logits: mean_i l_i, the logit of "from q(z)".
    """
    if d_logits.dim() == 2 and d_logits.shape[1] == 2:
        return (d_logits[:, 0] - d_logits[:, 1]).mean()
    return d_logits.reshape(-1).mean()


def discriminator_loss(d_real: torch.Tensor, d_perm: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss on logits of z ~ q(z) (real) and of permute_dims(z') (perm).

    (B, 2) logits: 0.5 * (CE(d_real, class 0) + CE(d_perm, class 1)), CE averaged over the
    batch (1Konny's convention). (B,) or (B, 1) logits: the logit is that of "from q(z)", so
    0.5 * (BCE(sigmoid(d_real), 1) + BCE(sigmoid(d_perm), 0)), consistent with tc_loss = mean l.
    """
    if d_real.dim() == 2 and d_real.shape[1] == 2:
        zeros = torch.zeros(d_real.shape[0], dtype=torch.long, device=d_real.device)
        ones = torch.ones(d_perm.shape[0], dtype=torch.long, device=d_perm.device)
        return 0.5 * (F.cross_entropy(d_real, zeros) + F.cross_entropy(d_perm, ones))
    real, perm = d_real.reshape(-1), d_perm.reshape(-1)
    return 0.5 * (
        F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
        + F.binary_cross_entropy_with_logits(perm, torch.zeros_like(perm))
    )


def discriminator_accuracy(d_real: torch.Tensor, d_perm: torch.Tensor) -> torch.Tensor:
    """Fraction of the 2B samples the discriminator classifies right (float32 scalar)."""
    if d_real.dim() == 2 and d_real.shape[1] == 2:
        real_ok = d_real[:, 0] >= d_real[:, 1]
        perm_ok = d_perm[:, 1] > d_perm[:, 0]
    else:
        real_ok = d_real.reshape(-1) >= 0
        perm_ok = d_perm.reshape(-1) < 0
    return torch.cat([real_ok, perm_ok]).float().mean()
