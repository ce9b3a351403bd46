"""Pure-PyTorch reference implementation: the definition of correct.

Everything here is written for readability, works in float64, and takes its randomness
explicitly (``eps`` for the reparameterised sample, ``index`` for permute_dims) so that
tests can compare kernels exactly. The Philox generator below is a bit-exact PyTorch port
of Triton's ``tl.randint4x`` / ``tl.randn`` (``triton/language/random.py``); every backend
draws its random numbers from the same stream, so one seed gives the same permutation and,
to float rounding, the same eps everywhere (DESIGN.md §8).

Shapes: B = batch, D = latent size, G = independent groups, K = discriminator logits (1 or 2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

REDUCTIONS = ("mean", "sum", "none")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype every backend computes in for inputs of ``dtype`` (the one place this rule is
    spelled, DESIGN.md §5): float64 in float64, the others (float32 and the 16-bit types, which
    are widened on load and rounded once on store) in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32

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


def reparameterize_noise(seed: int | torch.Tensor, batch: int, dim: int, device=None) -> torch.Tensor:
    """The float32 (B, D) eps every backend draws for reparameterize_kl: element (i, d) is
    philox_randn(seed, i*D + d). Counter-based, so the backward regenerates the forward's eps
    from the saved seed instead of storing it (as flash-attention replays its dropout mask)."""
    if device is None:
        device = seed.device if isinstance(seed, torch.Tensor) else torch.device("cpu")
    offsets = torch.arange(batch * dim, dtype=torch.int64, device=device).reshape(batch, dim)
    return philox_randn(seed, offsets)


def reparameterize_kl_backward(grad_z, gkl, mu, logvar, eps):
    """The gradients of (z, kl) by the textbook formula, all (B, D) (gkl: (B, 1) or (B, D)).

    gkl is row i's weight of the KL gradient (grad_kl[i], or the reduced KL's gradient, divided
    by B for "mean"). With std = exp(logvar / 2):
        grad_mu     = gz + gkl * mu
        grad_logvar = 0.5 * gz * std * eps + 0.5 * gkl * (exp(logvar) - 1)
        grad_eps    = gz * std
    std * eps is NOT rebuilt as z - mu: z is rounded to its dtype (bfloat16: 8 bits; mu = 3,
    logvar = -8 leaves std * eps below z's last bit) and inf - inf is NaN for an infinite mu.
    """
    std = torch.exp(0.5 * logvar)
    grad_mu = grad_z + gkl * mu
    grad_logvar = 0.5 * grad_z * std * eps + 0.5 * gkl * (torch.exp(logvar) - 1.0)
    return grad_mu, grad_logvar, grad_z * std


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


# =============================================================================================
# log q(z): the aggregate-posterior estimators of beta-TCVAE (Chen et al. 2018), materialised.
# (The log_qz op of fastfvae.functional; the kernels compute the same without the (M, K, D)
# tensor.)
#
# Queries z (M, D), mixture components mu, logvar (K, D) (in training: the minibatch, M = K = B,
# z[i] drawn from component i), data set size N. With
#     m[i, j, d] = log N(z[i, d]; mu[j, d], exp(logvar[j, d]))
# and log-weights w[i, j] (below), the estimates of log q(z_i) and log q(z_i,d) are
#     log_qz[i]     = logsumexp_j (sum_d m[i, j, d] + w[i, j])
#     log_qzj[i, d] = logsumexp_j (m[i, j, d] + w[i, j]),   log_prod_qzj[i] = sum_d log_qzj[i, d].
#
# Weights.
# - "mws" (minibatch weighted sampling, paper eq. S6): w[i, j] = -log(N * K) for every j.
# - "mss" (minibatch stratified sampling, paper appendix). Derivation for query i, whose z was
#   drawn from its own component i; the other K' = K - 1 components are a uniform sample without
#   replacement from the other N - 1 data points. q(z) = (1/N) sum_n q(z|n) is the expectation,
#   over a uniform K'-subset S of the data set, of (1/K') sum_{n in S} q(z|n). Split on whether
#   S contains i (probability K'/N): q(z) = (K'/N) E[(1/K') sum_S q | i in S]
#   + ((N - K')/N) E[(1/K') sum_S q | i not in S]. Estimate the first stratum with S = {i} and
#   K' - 1 of the other components, the second with S = all K' other components. Collecting the
#   coefficients:
#       own component j = i:                     1/N
#       the one component used only in stratum 2: (N - K')/(N K')     ("partner", j = (i+1) mod K)
#       the K' - 1 remaining components:         1/N + (N - K')/(N K') = 1/K'
#   The weights of a row sum to 1 and the estimate is unbiased for q(z_i) whichever component
#   is the partner (the others are exchangeable), so we take p(i) = (i + 1) mod K.
#   The matrix published with the original beta-TCVAE code (and copied by several libraries)
#   meant to put 1/N on the diagonal and the partner weight next to it, but wrote them with a
#   flat stride of K (= M+1 there) instead of K + 1: that fills COLUMN 0 with 1/N and COLUMN 1
#   with the partner weight (then patches W[K-2, 0]). So in every row i >= 2 the sample's own
#   component, which dominates q(z_i), gets 1/K' instead of 1/N (log q(z) too large by about
#   log(N/K')) and in row 1 it gets the partner weight; component 0 gets 1/N in every row; and
#   row K-2 sums to 2(N-K')/(NK') + (K-2)/K' instead of 1. (Even with the diagonal stride fixed, its patch W[K-2, 0] leaves row K-1 with
#   no partner weight and gives row K-2 two.) Here the weights are placed by index, not stride.
#   MSS needs K >= 2, N >= K and M <= K (query i belongs to component i).
# =============================================================================================
LOG_QZ_METHODS = ("mws", "mss")
LOG_2PI = 1.8378770664093453  # log(2 * pi)


def log_qz_weight_constants(num_components: int, dataset_size: int, method: str) -> tuple[float, float, float]:
    """The three log-weights (other, own, partner) of w[i, j] for K components and N = dataset_size.

    w[i, i] = own, w[i, (i + 1) % K] = partner (when K >= 2 and the partner is not i), every other
    j: other. For "mws" all three equal -log(N K).
    """
    import math

    n, k = float(dataset_size), num_components
    if method == "mws":
        w = -math.log(n * k)
        return w, w, w
    if method == "mss":
        k1 = k - 1  # K' = components other than the query's own
        partner = (n - k1) / (n * k1)
        return -math.log(k1), -math.log(n), (math.log(partner) if partner > 0 else -math.inf)
    raise ValueError(f"method: expected one of {LOG_QZ_METHODS}, got {method!r}")


def log_qz_weights(num_queries: int, num_components: int, dataset_size: int, method: str,
                   dtype=torch.float64, device=None) -> torch.Tensor:
    """The (M, K) log-weight matrix w[i, j] of ``log_qz`` (see the derivation above)."""
    other, own, partner = log_qz_weight_constants(num_components, dataset_size, method)
    w = torch.full((num_queries, num_components), other, dtype=dtype, device=device)
    if method == "mss":
        rows = torch.arange(num_queries, device=device)
        w[rows, (rows + 1) % num_components] = partner
        w[rows, rows] = own
    return w


def gaussian_log_density(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mu, exp(logvar)) (broadcasting): the one spelling of the formula."""
    return -0.5 * (LOG_2PI + logvar + (x - mu).pow(2) * torch.exp(-logvar))


def gaussian_log_density_matrix(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """m[i, j, d] = log N(z[i, d]; mu[j, d], exp(logvar[j, d])): (M, D), (K, D) -> (M, K, D)."""
    return gaussian_log_density(z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0))


def log_qz_marginals(z, mu, logvar, dataset_size: int, method: str = "mws"):
    """(log_qz (M,), log_qzj (M, D)): the joint and per-dimension log-density estimates."""
    m = gaussian_log_density_matrix(z, mu, logvar)
    w = log_qz_weights(z.shape[0], mu.shape[0], dataset_size, method, dtype=m.dtype, device=m.device)
    log_qz_joint = torch.logsumexp(m.sum(dim=2) + w, dim=1)
    log_qzj = torch.logsumexp(m + w.unsqueeze(2), dim=1)
    return log_qz_joint, log_qzj


def log_qz(z, mu, logvar, dataset_size: int, method: str = "mws"):
    """(log_qz (M,), log_prod_qzj (M,)) = (log q(z_i), sum_d log q(z_i,d)), as estimated above."""
    log_qz_joint, log_qzj = log_qz_marginals(z, mu, logvar, dataset_size, method)
    return log_qz_joint, log_qzj.sum(dim=1)


def log_qz_backward(grad_log_qz, grad_log_qzj, z, mu, logvar, log_qz_joint, log_qzj, dataset_size: int,
                    method: str = "mws"):
    """The gradients the kernels compute, in closed form (materialised): (grad_z, grad_mu, grad_logvar).

    With P[i, j] = exp(sum_d m[i, j, d] + w[i, j] - log_qz[i]) (softmax over j of the joint) and
    P_d[i, j, d] = exp(m[i, j, d] + w[i, j] - log_qzj[i, d]) (softmax over j per dimension),
        G[i, j, d] = grad_log_qz[i] * P[i, j] + grad_log_qzj[i, d] * P_d[i, j, d],
        r[i, j, d] = (z[i, d] - mu[j, d]) * exp(-logvar[j, d]),
        grad_z[i, d]       = -sum_j G r,
        grad_mu[j, d]      =  sum_i G r,
        grad_logvar[j, d]  =  sum_i G (0.5 r (z - mu) - 0.5).
    grad_log_qz (M,), grad_log_qzj (M, D); log_qz_joint, log_qzj: the forward's outputs.
    """
    m = gaussian_log_density_matrix(z, mu, logvar)
    w = log_qz_weights(z.shape[0], mu.shape[0], dataset_size, method, dtype=m.dtype, device=m.device)
    p_joint = torch.exp(m.sum(dim=2) + w - log_qz_joint.unsqueeze(1))
    p_dims = torch.exp(m + w.unsqueeze(2) - log_qzj.unsqueeze(1))
    g = grad_log_qz.reshape(-1, 1, 1) * p_joint.unsqueeze(2) + grad_log_qzj.unsqueeze(1) * p_dims
    diff = z.unsqueeze(1) - mu.unsqueeze(0)
    r = diff * torch.exp(-logvar).unsqueeze(0)
    grad_z = -(g * r).sum(dim=1)
    grad_mu = (g * r).sum(dim=0)
    grad_logvar = (g * (0.5 * r * diff - 0.5)).sum(dim=0)
    return grad_z, grad_mu, grad_logvar


# =============================================================================================
# gather_images: binary 64x64 images bit-packed to 512 bytes a row (fastfvae/data/packed.py).
#
# Bit order ("little", LSB first): pixel p = 64 * row + col of an image (row-major, y down) is
# bit (p % 8) of byte p // 8, i.e. pixel = (packed[i, p // 8] >> (p % 8)) & 1. This is
# numpy.packbits(pixels, bitorder="little") of the flattened image.
# An index outside [0, N) gives an image of NaN (no backend reads the index on the host, so
# none can raise without synchronising; NaN reaches the trainer's non-finite check).
# =============================================================================================
PACKED_IMAGE_SIDE = 64
PACKED_ROW_BYTES = PACKED_IMAGE_SIDE * PACKED_IMAGE_SIDE // 8  # 512


def unpack_images(packed: torch.Tensor) -> torch.Tensor:
    """packed uint8 (n, 512) -> uint8 (n, 64, 64) of 0/1, bit order as above."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1                      # (n, 512, 8): bit j of byte k
    return bits.reshape(-1, PACKED_IMAGE_SIDE, PACKED_IMAGE_SIDE)    # pixel 8k + j


def pack_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 / bool (n, 64, 64) or (n, 1, 64, 64) of 0/1 -> uint8 (n, 512); inverse of unpack_images."""
    bits = images.reshape(-1, PACKED_ROW_BYTES, 8).to(torch.int32)
    weights = 1 << torch.arange(8, dtype=torch.int32, device=images.device)
    return (bits * weights).sum(dim=-1).to(torch.uint8)


def gather_images(packed: torch.Tensor, index: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """out[b, 0] = unpack_images(packed[index[b]]) as ``dtype``, (B, 1, 64, 64); NaN images for
    indices outside [0, N)."""
    rows = packed.shape[0]
    index = index.long()
    valid = (index >= 0) & (index < rows)
    safe = torch.where(valid, index, torch.zeros_like(index))       # no out-of-range read
    images = unpack_images(packed[safe]).to(dtype)
    nan = torch.full((), float("nan"), dtype=dtype, device=packed.device)
    return torch.where(valid.reshape(-1, 1, 1), images, nan).unsqueeze(1)
