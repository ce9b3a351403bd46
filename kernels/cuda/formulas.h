// Per-element formulas and index arithmetic of the CUDA kernels, as __host__ __device__
// functions with no CUDA header, so that a plain C++ compiler can build and check them on a
// machine without a GPU (the kernels in kernels/cuda/*.cu only add memory access and
// reductions around these). Acc is the arithmetic type: float (float16, bfloat16, float32
// inputs) or double (float64 inputs).
#pragma once
#include <math.h>
#include <stdint.h>

#include "philox.h"  // FFV_HD, philox_randn, permutation_key, permutation_row_bits

namespace ffv {
namespace cuda_math {

// ---- float / double overloads of the math functions (device and host) ----------------------
FFV_HD float exp_(float x) { return expf(x); }
FFV_HD double exp_(double x) { return exp(x); }
FFV_HD float log_(float x) { return logf(x); }
FFV_HD double log_(double x) { return log(x); }
FFV_HD float log1p_(float x) { return log1pf(x); }
FFV_HD double log1p_(double x) { return log1p(x); }
FFV_HD float abs_(float x) { return fabsf(x); }
FFV_HD double abs_(double x) { return fabs(x); }

// ---- reparameterize_kl ---------------------------------------------------------------------
// z = mu + exp(logvar / 2) * eps
template <typename Acc>
FFV_HD Acc reparameterize(Acc mu, Acc logvar, Acc eps) {
  return mu + exp_(Acc(0.5) * logvar) * eps;
}

// One term of kl_i = 0.5 * sum_d (mu^2 + exp(logvar) - logvar - 1) (the 0.5 is applied once
// to the row's sum).
template <typename Acc>
FFV_HD Acc kl_term(Acc mu, Acc logvar) {
  return mu * mu + exp_(logvar) - logvar - Acc(1);
}

// Weight of row i's KL gradient: grad_kl[i] (NONE), grad_kl[0] / B (MEAN), grad_kl[0] (SUM).
// `g` is grad_kl[i] for NONE and grad_kl[0] otherwise. reduction: ffv_reduction code.
template <typename Acc>
FFV_HD Acc kl_row_grad(Acc g, int32_t reduction, int64_t B) {
  return reduction == 1 /* FFV_REDUCTION_MEAN */ ? g / static_cast<Acc>(B) : g;
}

// grad_mu = gz + gkl_i * mu
template <typename Acc>
FFV_HD Acc reparameterize_kl_grad_mu(Acc gz, Acc gkl, Acc mu) {
  return gz + gkl * mu;
}

// grad_logvar = 0.5 * gz * exp(logvar / 2) * eps + 0.5 * gkl_i * (exp(logvar) - 1), eps the
// forward's noise (given, or regenerated from the seed). Not 0.5 * gz * (z - mu): z is rounded
// to its dtype (in bfloat16, mu = 3 and logvar = -8 leave std * eps under z's last bit), and
// inf - inf is NaN.
template <typename Acc>
FFV_HD Acc reparameterize_kl_grad_logvar(Acc gz, Acc gkl, Acc logvar, Acc eps) {
  return Acc(0.5) * gz * exp_(Acc(0.5) * logvar) * eps + Acc(0.5) * gkl * (exp_(logvar) - Acc(1));
}

// grad_eps = gz * exp(logvar / 2)
template <typename Acc>
FFV_HD Acc reparameterize_kl_grad_eps(Acc gz, Acc logvar) {
  return gz * exp_(Acc(0.5) * logvar);
}

// ---- discriminator_loss --------------------------------------------------------------------
// The forms follow PyTorch's kernels, so that Inf and NaN propagate as in fastfvae/reference/:
// cross_entropy = -log_softmax (max-subtracted), binary_cross_entropy_with_logits =
// (1 - y) * x - log_sigmoid(x).

// Larger of a and b; NaN in `a` gives b (the NaN still reaches the result through a - m).
template <typename Acc>
FFV_HD Acc max_(Acc a, Acc b) {
  return a > b ? a : b;
}

// CE of a 2-logit row (x0, x1) for class `label` (0 or 1):
// log(exp(x0 - m) + exp(x1 - m)) - (x_label - m), m = max(x0, x1).
template <typename Acc>
FFV_HD Acc cross_entropy2(Acc x0, Acc x1, int label) {
  const Acc m = max_(x0, x1);
  const Acc lse = log_(exp_(x0 - m) + exp_(x1 - m));
  return lse - ((label == 0 ? x0 : x1) - m);
}

// softmax(x0, x1)[k] - (k == label): the CE gradient for one logit.
template <typename Acc>
FFV_HD Acc cross_entropy2_grad(Acc x0, Acc x1, int label, int k) {
  const Acc m = max_(x0, x1);
  const Acc e0 = exp_(x0 - m), e1 = exp_(x1 - m);
  const Acc p = (k == 0 ? e0 : e1) / (e0 + e1);
  return p - (k == label ? Acc(1) : Acc(0));
}

// log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|))
template <typename Acc>
FFV_HD Acc log_sigmoid(Acc x) {
  return (x < Acc(0) ? x : Acc(0)) - log1p_(exp_(-abs_(x)));
}

// BCE with logits for target y in {0, 1}: (1 - y) * x - log_sigmoid(x). For y = 1 the 0 * x
// is kept on purpose: PyTorch computes it, so x = +-Inf gives NaN there as in the reference.
template <typename Acc>
FFV_HD Acc bce_with_logits(Acc x, int target) {
  return (target == 1 ? Acc(0) : Acc(1)) * x - log_sigmoid(x);
}

// sigmoid(x) - y: the BCE gradient.
template <typename Acc>
FFV_HD Acc bce_with_logits_grad(Acc x, int target) {
  return Acc(1) / (Acc(1) + exp_(-x)) - (target == 1 ? Acc(1) : Acc(0));
}

// ---- permute_dims --------------------------------------------------------------------------
// Smallest power of two >= n (n >= 1).
FFV_HD int64_t next_pow2(int64_t n) {
  int64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

// Padding key for the in-block sort: larger than every real key. A real key can equal it
// only when B is a power of two, and then there is no padding (see cuda_review.md).
constexpr int64_t kPadKey = INT64_MAX;

// Sort key of row `row` of column (g, d): philox counter = global element index (g*B + row)*D + d.
FFV_HD int64_t column_key(uint64_t seed, int64_t g, int64_t row, int64_t d, int64_t B, int64_t D,
                          int row_bits) {
  const uint64_t offset = static_cast<uint64_t>((g * B + row) * D + d);
  return permutation_key(seed, offset, row, row_bits);
}

// Bitonic sorting network on n = 2^m keys, written as "pairs": stage (k, j) with k = 2, 4, ..., n
// and j = k/2, k/4, ..., 1 compares n/2 disjoint pairs (lo, lo + j), pair p in [0, n/2):
// lo = p with a 0 bit inserted at bit position log2(j). The pair is put in ascending order when
// bit k of lo is 0, else descending. After the last stage the n keys are ascending.
FFV_HD int64_t bitonic_lo(int64_t p, int64_t j) {
  return ((p & ~(j - 1)) << 1) | (p & (j - 1));
}

FFV_HD void bitonic_compare_exchange(int64_t* keys, int64_t p, int64_t j, int64_t k) {
  const int64_t lo = bitonic_lo(p, j), hi = lo + j;
  const bool ascending = (lo & k) == 0;
  const int64_t a = keys[lo], b = keys[hi];
  if ((a > b) == ascending) {
    keys[lo] = b;
    keys[hi] = a;
  }
}

}  // namespace cuda_math
}  // namespace ffv
