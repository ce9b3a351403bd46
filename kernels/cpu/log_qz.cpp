// log_qz on the CPU: beta-TCVAE's log q(z) and log q(z_d) estimates with an online (streaming)
// logsumexp over the mixture components, never materialising the (M, K, D) or (M, K) tensors.
//
// Queries z [M, D], components mu, logvar [K, D]; m[i,j,d] = log N(z[i,d]; mu[j,d], exp(logvar[j,d]))
//   = c[j,d] - 0.5 * (z[i,d] - mu[j,d])^2 * iv[j,d],  c = -0.5*(log(2 pi) + logvar), iv = exp(-logvar).
// w[i,j] = own (j == i), partner (j == (i+1) % K), other (fastfvae/reference/log_qz.py derives them).
// forward   log_qz[i]    = logsumexp_j (s[i,j] + w[i,j]),  s[i,j] = sum_d m[i,j,d]
//           log_qzj[i,d] = logsumexp_j (m[i,j,d] + w[i,j])
// backward  P[i,j] = exp(s + w - log_qz[i]),  P_d[i,j,d] = exp(m + w - log_qzj[i,d])   (recomputed)
//           G = g[i] P + h[i,d] P_d,  r = (z - mu) * iv
//           grad_z[i,d] = -sum_j G r;  grad_mu[j,d] = sum_i G r;  grad_logvar[j,d] = sum_i G (0.5 r (z - mu) - 0.5)
//
// Layout. The components are copied once, transposed to [D][K] in the compute type (O(K D)), so
// the innermost loops run over a tile of components j with unit stride and vectorise (with D = 10,
// a loop over d would fill less than one AVX-512 register). Rows are processed in blocks of
// kRowBlock queries per component tile, so a tile (3 * kTileJ * D values: 60 KB of float32 at
// D = 10) is reused from the L1/L2 caches. Each tile ends in horizontal reductions (its maximum
// and its sum of exps, per query and dimension), whose scalar tails cost as much as the tile's
// vector work at 128 components; 512 a tile measured faster at every size tried (one thread,
// AMD EPYC Zen 4, forward + backward, min: 2048x10 86 -> 63 ms, 512x10 4.65 -> 4.02 ms; forward
// 1024x64 50 -> 43-48 ms; 256 a tile in between).
// OpenMP splits the query rows; in the backward each thread accumulates grad_mu / grad_logvar
// for its rows in its own [D][K] buffers (O(threads * K * D), capped at kAccumulatorBudget bytes
// by using fewer threads), summed at the end in a fixed order (deterministic for a given thread
// count).
// The float forward takes each dimension's logsumexp in one pass, shifted by an upper bound of its
// terms instead of their running maximum (forward_block_one_pass: no tile of terms stored, no
// maximum pass), and falls back to the two-pass form where that sum is tiny or a term may be NaN.
// Forward 2048 x 10, one thread, Zen 4: 27 -> 17.4 ms; 15.9 ms with iv / 2 stored (log_density)
// and exp_nonpositive's unsigned clamp.
// exp: float uses an inlined polynomial (below) that the compiler vectorises; the hot loops are
// compiled for x86-64 baseline, AVX2 and AVX-512 (target_clones) and chosen at load time.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu_common.h"
#include "cpu_math.h"  // exp_reduced_f32, FFV_INLINE

namespace {

using ffv::Element;

constexpr int64_t kTileJ = 512;   // components per tile
constexpr int64_t kRowBlock = 8;  // queries sharing one component tile
constexpr int64_t kAccumulatorBudget = int64_t{256} << 20;  // bytes of per-thread backward accumulators

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FFV_MULTIVERSION __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define FFV_MULTIVERSION
#endif

// e^x for x in [-87.33, 88] (kFlush: [-100, 88]): x = k ln2 + r (Cody-Waite), e^r by Cephes'
// expf polynomial (as cpu_math.h's exp_f32, ~1 ulp), times 2^k built in the exponent bits: one
// normal float for every k of the first range, so one multiply and no overflow path; with kFlush,
// 2^k is 0 where it would be subnormal (k's biased exponent clamped at 0: one integer max).
// Branch-free, so that loops calling it vectorise.
template <bool kFlush = false>
FFV_INLINE float exp_scaled(float x) {
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float kf = (x * 1.44269504088896341f + shifter) - shifter;
  const float er = ffv::cpu_math::exp_reduced_f32(x, kf);
  int32_t biased = static_cast<int32_t>(kf) + 127;
  if constexpr (kFlush) biased = biased > 0 ? biased : 0;
  return er * ffv::bits_float(static_cast<uint32_t>(biased) << 23);
}

// max(x, lowest) for a negative `lowest` given by its bits, as an unsigned minimum of the bits (one
// vpminud where GCC compiles the float select to a compare and a blend): below zero a float's bits
// grow with its magnitude, and zero (0 or 0x80000000) and positive x keep theirs. Not for NaN.
FFV_INLINE float at_least_negative(float x, uint32_t lowest_bits) {
  const uint32_t bits = ffv::float_bits(x);
  return ffv::bits_float(bits < lowest_bits ? bits : lowest_bits);
}

// e^x for the logsumexp terms of this file, which are at most zero up to rounding (x - max,
// s - log_qz, m - log_qzj): 0 below -87.33 (no subnormals), NaN stays NaN. The exps are about
// half of log_qz's time (forward + backward at 2048 x 10, with them replaced by an FMA: 60 -> 33
// ms), so this one does without what a general exp needs here: a second 2^k factor and the
// overflow select.
FFV_INLINE float exp_lse(float x) {
  const float clamped = x > -87.33f ? (x < 88.0f ? x : 88.0f) : -87.33f;  // a NaN becomes -87.33 here
  const float flushed = x < -87.33f ? 0.0f : exp_scaled(clamped);
  return x != x ? x : flushed;
}
FFV_INLINE double exp_lse(double x) { return std::exp(x); }

// e^x for x <= 0 or -inf, never NaN (the one-pass forward's terms): e^-87.33 ~ 1e-38 in place of
// anything smaller, which the one-pass sum's floor (kMinOnePassSum) makes negligible.
FFV_INLINE float exp_nonpositive(float x) { return exp_scaled(at_least_negative(x, 0xC2AEA8F6u /* -87.33f */)); }

// exp_lse for terms that cannot be NaN (the backward's, given finite inputs and forward outputs:
// one_pass_applies) with fewer selects: no NaN select, and instead of the flush below -87.33,
// exp_scaled's flush of subnormal 2^k. The same values as exp_lse down to x ~ -87.7 (exp_lse is 0
// below -87.33; here ~1e-38 in between). Backward 2048 x 10, one thread, Zen 4: 30.1 -> 26.5 ms
// with float selects for the clamps, ~25 ms with at_least_negative for the lower one.
FFV_INLINE float exp_finite(float x) {
  const float above_low = at_least_negative(x, 0xC2C80000u /* -100.0f */);
  return exp_scaled<true>(above_low < 88.0f ? above_low : 88.0f);
}

// The backward's exp: exp_finite where no term can be NaN (kFinite), else exp_lse.
template <bool kFinite>
FFV_INLINE float exp_term(float x) {
  if constexpr (kFinite) return exp_finite(x);
  return exp_lse(x);
}
template <bool kFinite>
FFV_INLINE double exp_term(double x) { return exp_lse(x); }

template <typename C>
struct Components {  // mu, iv, iv / 2, c as [D][K] (transposed), compute type
  std::vector<C> mu, inv_var, half_inv_var, log_norm;
};

template <typename T, typename C>
Components<C> transpose_components(int64_t K, int64_t D, const T* mu, int64_t mu_s0, int64_t mu_s1,
                                   const T* logvar, int64_t lv_s0, int64_t lv_s1) {
  using E = Element<T>;
  Components<C> comp;
  comp.mu.resize(static_cast<size_t>(K * D));
  comp.inv_var.resize(static_cast<size_t>(K * D));
  comp.half_inv_var.resize(static_cast<size_t>(K * D));
  comp.log_norm.resize(static_cast<size_t>(K * D));
  const C log_2pi = static_cast<C>(1.8378770664093453);
  FFV_OMP(parallel for if(K * D >= ffv::kParallelCheap) schedule(static))
  for (int64_t j = 0; j < K; ++j) {
    for (int64_t d = 0; d < D; ++d) {
      const C lv = E::load(logvar + j * lv_s0 + d * lv_s1);
      comp.mu[d * K + j] = E::load(mu + j * mu_s0 + d * mu_s1);
      comp.inv_var[d * K + j] = std::exp(-lv);
      comp.half_inv_var[d * K + j] = C(0.5) * comp.inv_var[d * K + j];
      comp.log_norm[d * K + j] = C(-0.5) * (log_2pi + lv);
    }
  }
  return comp;
}

// The log-weights of one query row over one tile [j0, j0 + n).
template <typename C>
FFV_INLINE void tile_weights(C* w, int64_t i, int64_t j0, int64_t n, int64_t K, const C log_w[3]) {
  for (int64_t jj = 0; jj < n; ++jj) w[jj] = log_w[0];
  if (i < K && i >= j0 && i < j0 + n) w[i - j0] = log_w[1];
  const int64_t partner = K > 1 ? (i + 1) % K : -1;
  if (i < K && partner != i && partner >= j0 && partner < j0 + n) w[partner - j0] = log_w[2];
}

// m = log N(z; mu, 1/iv) = c - (z - mu)^2 (iv / 2), in one place: the forward's two paths and
// the backward must round it alike. (iv / 2 is exact, so this is c - ((0.5 (z - mu)) (z - mu)) iv
// bit for bit, one multiply fewer.)
template <typename C>
FFV_INLINE C log_density(C z, C mu, C half_inv_var, C log_norm) {
  const C diff = z - mu;
  return log_norm - diff * diff * half_inv_var;
}

// md[d][jj] = m[i, j0+jj, d] + w[jj] and s[jj] = sum_d m[i, j0+jj, d] + w[jj], for one query row.
// The backward and the two-pass forward call this, and the one-pass forward computes m and s in
// the same order, so the backward's softmaxes see the forward's terms bit for bit.
template <typename C>
FFV_INLINE void tile_log_density(const Components<C>& comp, const C* z_row, const C* w, int64_t j0, int64_t n,
                                 int64_t K, int64_t D, C* md, C* s) {
  for (int64_t jj = 0; jj < n; ++jj) s[jj] = w[jj];
  for (int64_t d = 0; d < D; ++d) {
    const C zd = z_row[d];
    const C* mu = comp.mu.data() + d * K + j0;
    const C* hiv = comp.half_inv_var.data() + d * K + j0;
    const C* c = comp.log_norm.data() + d * K + j0;
    C* out = md + d * kTileJ;
#pragma omp simd
    for (int64_t jj = 0; jj < n; ++jj) {
      const C m = log_density(zd, mu[jj], hiv[jj], c[jj]);
      out[jj] = m + w[jj];
      s[jj] += m;
    }
  }
}

// Online logsumexp state: running maximum and the sum of exp(x - maximum). A +inf term makes
// the result +inf (unless a NaN appears, which wins), as torch.logsumexp.
template <typename C>
struct RunningLse {
  C max = -std::numeric_limits<C>::infinity();
  C sum = 0;
  bool pos_inf = false;

  FFV_INLINE void add_tile(const C* x, int64_t n) {
    C tile_max = -std::numeric_limits<C>::infinity();
#pragma omp simd reduction(max : tile_max)
    for (int64_t jj = 0; jj < n; ++jj) tile_max = x[jj] > tile_max ? x[jj] : tile_max;  // skips NaN
    if (tile_max == std::numeric_limits<C>::infinity()) pos_inf = true;
    if (pos_inf || tile_max == -std::numeric_limits<C>::infinity()) {
      // Rare: nothing finite to add (or the result is already +inf); only a NaN still matters.
      for (int64_t jj = 0; jj < n; ++jj)
        if (x[jj] != x[jj]) sum = x[jj];
      return;
    }
    // A NaN term makes exp_lse return NaN, so tile_sum and the result become NaN.
    const C new_max = tile_max > max ? tile_max : max;
    C tile_sum = 0;
#pragma omp simd reduction(+ : tile_sum)
    for (int64_t jj = 0; jj < n; ++jj) tile_sum += exp_lse(x[jj] - new_max);
    sum = (max == -std::numeric_limits<C>::infinity() ? C(0) : sum * std::exp(max - new_max)) + tile_sum;
    max = new_max;
  }

  C result() const {
    if (sum != sum) return sum;
    if (pos_inf) return std::numeric_limits<C>::infinity();
    if (max == -std::numeric_limits<C>::infinity()) return max;
    return max + std::log(sum);
  }
};

template <typename C>
struct ForwardArgs {
  int64_t M, K, D;
  const Components<C>* comp;
  const C* z;  // [M, D] contiguous compute-type copy of the queries
  C log_w[3];  // other, own, partner
  C* log_qz;   // [M]
  C* log_qzj;  // [M, D]
};

// Queries [row0, row0 + rows) of the forward.
template <typename C>
FFV_INLINE void forward_block_impl(const ForwardArgs<C>& a, int64_t row0, int64_t rows) {
  const int64_t D = a.D;
  RunningLse<C> joint[kRowBlock];
  std::vector<RunningLse<C>> dims(static_cast<size_t>(kRowBlock * D));
  std::vector<C> md(static_cast<size_t>(kTileJ * D));
  C s[kTileJ], w[kTileJ];
  for (int64_t j0 = 0; j0 < a.K; j0 += kTileJ) {
    const int64_t n = std::min(kTileJ, a.K - j0);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = row0 + r;
      tile_weights(w, i, j0, n, a.K, a.log_w);
      tile_log_density(*a.comp, a.z + i * D, w, j0, n, a.K, D, md.data(), s);
      joint[r].add_tile(s, n);
      for (int64_t d = 0; d < D; ++d) dims[r * D + d].add_tile(md.data() + d * kTileJ, n);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    a.log_qz[row0 + r] = joint[r].result();
    for (int64_t d = 0; d < D; ++d) a.log_qzj[(row0 + r) * D + d] = dims[r * D + d].result();
  }
}

FFV_MULTIVERSION void forward_block(const ForwardArgs<float>& a, int64_t row0, int64_t rows) {
  forward_block_impl(a, row0, rows);
}
void forward_block(const ForwardArgs<double>& a, int64_t row0, int64_t rows) { forward_block_impl(a, row0, rows); }

// The one-pass forward (float). log_qzj[i,d] = logsumexp_j x[i,j,d] with x = m + w is bounded
// above by bound[d] = max_j (c[j,d] + max log_w), as m <= c; float rounding is monotone, so the
// computed x stays <= the computed bound too. Hence log_qzj = bound[d] + log(sum_j e^(x - bound[d]))
// with every exponent <= 0: one pass that exps each term as it is computed, with no tile of terms
// stored, no maximum pass and no rescaling. Exact (to rounding) while that sum is not tiny: a sum
// of at least kMinOnePassSum leaves the terms below e^-87.33 (each counted as ~1e-38) some 1e-29
// of it; a smaller sum (a query far from every component in dimension d) is recomputed by the
// two-pass logsumexp. It needs terms that cannot be NaN (one_pass_applies); the joint log_qz
// keeps the two-pass logsumexp (its bound, a sum over D dimensions, is often far too loose).
constexpr float kMinOnePassSum = 0x1p-30f;

// Whether the forward may take the one-pass path: finite queries, means and log-normalisers, and
// inverse variances in (0, inf) (so (z - mu)^2 iv is never 0 * inf), and a finite largest
// log-weight. Then every term is a number or -inf, never NaN.
bool one_pass_applies(const Components<float>& comp, const std::vector<float>& z, const float log_w[3]) {
  const auto finite = [](float v) { return std::isfinite(v); };
  if (!std::isfinite(std::max({log_w[0], log_w[1], log_w[2]}))) return false;
  if (!std::all_of(z.begin(), z.end(), finite) || !std::all_of(comp.mu.begin(), comp.mu.end(), finite)) return false;
  if (!std::all_of(comp.log_norm.begin(), comp.log_norm.end(), finite)) return false;
  return std::all_of(comp.inv_var.begin(), comp.inv_var.end(), [](float v) { return v > 0.0f && std::isfinite(v); });
}

// bound[d] = max_j (c[j,d] + max log_w): the per-dimension upper bounds of the one-pass forward.
std::vector<float> dimension_bounds(const Components<float>& comp, int64_t K, int64_t D, const float log_w[3]) {
  const float max_w = std::max({log_w[0], log_w[1], log_w[2]});
  std::vector<float> bound(static_cast<size_t>(D));
  for (int64_t d = 0; d < D; ++d) {
    const float* c = comp.log_norm.data() + d * K;
    bound[d] = *std::max_element(c, c + K) + max_w;
  }
  return bound;
}

// log_qzj[i,d] by the two-pass streaming logsumexp over every component (forward_block's result).
float two_pass_dimension_lse(const ForwardArgs<float>& a, const float* z_row, int64_t i, int64_t d) {
  RunningLse<float> lse;
  float w[kTileJ], x[kTileJ];
  for (int64_t j0 = 0; j0 < a.K; j0 += kTileJ) {
    const int64_t n = std::min(kTileJ, a.K - j0);
    tile_weights(w, i, j0, n, a.K, a.log_w);
    const float* mu = a.comp->mu.data() + d * a.K + j0;
    const float* hiv = a.comp->half_inv_var.data() + d * a.K + j0;
    const float* c = a.comp->log_norm.data() + d * a.K + j0;
    for (int64_t jj = 0; jj < n; ++jj) x[jj] = log_density(z_row[d], mu[jj], hiv[jj], c[jj]) + w[jj];
    lse.add_tile(x, n);
  }
  return lse.result();
}

FFV_MULTIVERSION void forward_block_one_pass(const ForwardArgs<float>& a, const float* bound, int64_t row0,
                                             int64_t rows) {
  const int64_t D = a.D, K = a.K;
  RunningLse<float> joint[kRowBlock];
  std::vector<float> sums(static_cast<size_t>(kRowBlock * D), 0.0f);  // [rows, D] sums of e^(x - bound)
  float s[kTileJ], w[kTileJ];
  for (int64_t j0 = 0; j0 < K; j0 += kTileJ) {
    const int64_t n = std::min(kTileJ, K - j0);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = row0 + r;
      const float* z_row = a.z + i * D;
      tile_weights(w, i, j0, n, K, a.log_w);
      for (int64_t jj = 0; jj < n; ++jj) s[jj] = w[jj];
      for (int64_t d = 0; d < D; ++d) {
        const float zd = z_row[d], shift = bound[d];
        const float* mu = a.comp->mu.data() + d * K + j0;
        const float* hiv = a.comp->half_inv_var.data() + d * K + j0;
        const float* c = a.comp->log_norm.data() + d * K + j0;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t jj = 0; jj < n; ++jj) {
          const float m = log_density(zd, mu[jj], hiv[jj], c[jj]);
          sum += exp_nonpositive((m + w[jj]) - shift);
          s[jj] += m;
        }
        sums[r * D + d] += sum;
      }
      joint[r].add_tile(s, n);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = row0 + r;
    a.log_qz[i] = joint[r].result();
    for (int64_t d = 0; d < D; ++d) {
      const float sum = sums[r * D + d];
      a.log_qzj[i * D + d] =
          sum >= kMinOnePassSum ? bound[d] + std::log(sum) : two_pass_dimension_lse(a, a.z + i * D, i, d);
    }
  }
}

template <typename C>
struct BackwardArgs {
  int64_t M, K, D;
  const Components<C>* comp;
  const C* z;          // [M, D] contiguous compute-type queries
  const C* g;          // [M] grad of log_qz (contiguous copy)
  const C* h;          // [M, D] grad of log_qzj (contiguous copy)
  const C* log_qz;     // [M]
  const C* log_qzj;    // [M, D]
  C log_w[3];
  C* grad_z;           // [M, D] compute type
};

// Queries [row0, row0 + rows) of the backward; adds their contributions to acc_mu and 2 * acc_lv
// ([D][K], this thread's buffers: the caller halves acc_lv, exactly, once at the end) and writes
// grad_z for these rows. kFiniteTerms: no term can be NaN (exp_finite for exp_lse).
template <bool kFiniteTerms, typename C>
FFV_INLINE void backward_block_impl(const BackwardArgs<C>& a, int64_t row0, int64_t rows, C* acc_mu, C* acc_lv) {
  const int64_t D = a.D, K = a.K;
  std::vector<C> md(static_cast<size_t>(kTileJ * D));
  std::vector<C> gz(static_cast<size_t>(kRowBlock * D), C(0));
  C s[kTileJ], w[kTileJ], gp[kTileJ];
  for (int64_t j0 = 0; j0 < K; j0 += kTileJ) {
    const int64_t n = std::min(kTileJ, K - j0);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = row0 + r;
      const C* z_row = a.z + i * D;
      tile_weights(w, i, j0, n, K, a.log_w);
      tile_log_density(*a.comp, z_row, w, j0, n, K, D, md.data(), s);
      const C g = a.g[i], lq = a.log_qz[i];
      if (g != C(0)) {
#pragma omp simd
        for (int64_t jj = 0; jj < n; ++jj) gp[jj] = g * exp_term<kFiniteTerms>(s[jj] - lq);
      } else {
        for (int64_t jj = 0; jj < n; ++jj) gp[jj] = C(0);
      }
      for (int64_t d = 0; d < D; ++d) {
        const C zd = z_row[d], hd = a.h[i * D + d], lqd = a.log_qzj[i * D + d];
        const C* mu = a.comp->mu.data() + d * K + j0;
        const C* iv = a.comp->inv_var.data() + d * K + j0;
        const C* mdd = md.data() + d * kTileJ;
        C* amu = acc_mu + d * K + j0;
        C* alv = acc_lv + d * K + j0;
        C gz_sum = 0;
        if (hd != C(0)) {
#pragma omp simd reduction(+ : gz_sum)
          for (int64_t jj = 0; jj < n; ++jj) {
            const C diff = zd - mu[jj];
            const C rr = diff * iv[jj];
            const C G = gp[jj] + hd * exp_term<kFiniteTerms>(mdd[jj] - lqd);
            const C Gr = G * rr;
            gz_sum += Gr;
            amu[jj] += Gr;
            alv[jj] += G * (rr * diff - C(1));
          }
        } else {
#pragma omp simd reduction(+ : gz_sum)
          for (int64_t jj = 0; jj < n; ++jj) {
            const C diff = zd - mu[jj];
            const C rr = diff * iv[jj];
            const C G = gp[jj];
            const C Gr = G * rr;
            gz_sum += Gr;
            amu[jj] += Gr;
            alv[jj] += G * (rr * diff - C(1));
          }
        }
        gz[r * D + d] -= gz_sum;
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t d = 0; d < D; ++d) a.grad_z[(row0 + r) * D + d] = gz[r * D + d];
}

FFV_MULTIVERSION void backward_block(const BackwardArgs<float>& a, int64_t row0, int64_t rows, float* acc_mu,
                                     float* acc_lv, bool finite_terms) {
  if (finite_terms) {
    backward_block_impl<true>(a, row0, rows, acc_mu, acc_lv);
  } else {
    backward_block_impl<false>(a, row0, rows, acc_mu, acc_lv);
  }
}
void backward_block(const BackwardArgs<double>& a, int64_t row0, int64_t rows, double* acc_mu, double* acc_lv,
                    bool /*finite_terms*/) {
  backward_block_impl<false>(a, row0, rows, acc_mu, acc_lv);
}

// Contiguous compute-type copy of a strided [rows, cols] tensor of element type T (cols = 1 for a vector).
template <typename T, typename C>
std::vector<C> load_matrix(const void* base, int64_t rows, int64_t cols, int64_t s0, int64_t s1) {
  using E = Element<T>;
  const T* p = static_cast<const T*>(base);
  std::vector<C> out(static_cast<size_t>(rows * cols));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t d = 0; d < cols; ++d) out[i * cols + d] = E::load(p + i * s0 + d * s1);
  return out;
}

bool worth_threads(int64_t M, int64_t K, int64_t D) { return M > kRowBlock && M * K * D >= (int64_t{1} << 15); }

template <typename T>
ffv_status forward(int64_t M, int64_t K, int64_t D, const void* z, int64_t z_s0, int64_t z_s1, const void* mu,
                   int64_t mu_s0, int64_t mu_s1, const void* logvar, int64_t lv_s0, int64_t lv_s1,
                   const double log_w[3], void* log_qz, void* log_qzj) {
  using C = typename Element<T>::compute;
  const Components<C> comp = transpose_components<T, C>(K, D, static_cast<const T*>(mu), mu_s0, mu_s1,
                                                        static_cast<const T*>(logvar), lv_s0, lv_s1);
  const std::vector<C> zc = load_matrix<T, C>(z, M, D, z_s0, z_s1);
  ForwardArgs<C> a{M, K, D, &comp, zc.data(),
                   {static_cast<C>(log_w[0]), static_cast<C>(log_w[1]), static_cast<C>(log_w[2])},
                   static_cast<C*>(log_qz), static_cast<C*>(log_qzj)};
  const int64_t blocks = (M + kRowBlock - 1) / kRowBlock;
  if constexpr (std::is_same_v<C, float>) {
    if (one_pass_applies(comp, zc, a.log_w)) {
      const std::vector<float> bound = dimension_bounds(comp, K, D, a.log_w);
      FFV_OMP(parallel for if(worth_threads(M, K, D)) schedule(dynamic, 4))
      for (int64_t b = 0; b < blocks; ++b)
        forward_block_one_pass(a, bound.data(), b * kRowBlock, std::min(kRowBlock, M - b * kRowBlock));
      return FFV_OK;
    }
  }
  FFV_OMP(parallel for if(worth_threads(M, K, D)) schedule(dynamic, 4))
  for (int64_t b = 0; b < blocks; ++b) forward_block(a, b * kRowBlock, std::min(kRowBlock, M - b * kRowBlock));
  return FFV_OK;
}

template <typename T>
ffv_status backward(int64_t M, int64_t K, int64_t D, const void* grad_log_qz, int64_t g_s0,
                    const void* grad_log_qzj, int64_t h_s0, int64_t h_s1, const void* z, int64_t z_s0,
                    int64_t z_s1, const void* mu, int64_t mu_s0, int64_t mu_s1, const void* logvar,
                    int64_t lv_s0, int64_t lv_s1, const void* log_qz, int64_t lq_s0, const void* log_qzj,
                    int64_t lqj_s0, int64_t lqj_s1, const double log_w[3], void* grad_z_out,
                    void* grad_mu_out, void* grad_logvar_out) {
  using E = Element<T>;
  using C = typename E::compute;
  const Components<C> comp = transpose_components<T, C>(K, D, static_cast<const T*>(mu), mu_s0, mu_s1,
                                                        static_cast<const T*>(logvar), lv_s0, lv_s1);
  const std::vector<C> zc = load_matrix<T, C>(z, M, D, z_s0, z_s1);
  // The incoming gradients and the saved logsumexps are in the compute type C.
  const std::vector<C> g = load_matrix<C, C>(grad_log_qz, M, 1, g_s0, 0);
  const std::vector<C> h = load_matrix<C, C>(grad_log_qzj, M, D, h_s0, h_s1);
  const std::vector<C> lq = load_matrix<C, C>(log_qz, M, 1, lq_s0, 0);
  const std::vector<C> lqj = load_matrix<C, C>(log_qzj, M, D, lqj_s0, lqj_s1);
  std::vector<C> grad_z(static_cast<size_t>(M * D));
  BackwardArgs<C> a{M, K, D, &comp, zc.data(), g.data(), h.data(), lq.data(), lqj.data(),
                    {static_cast<C>(log_w[0]), static_cast<C>(log_w[1]), static_cast<C>(log_w[2])},
                    grad_z.data()};
  // Threads that accumulate their own grad_mu / grad_logvar copies: at most as many as fit
  // kAccumulatorBudget (a many-core machine with a huge K then uses fewer threads, not more memory).
  const int64_t per_thread_bytes = 2 * K * D * static_cast<int64_t>(sizeof(C));
  const int64_t affordable = std::max<int64_t>(1, kAccumulatorBudget / per_thread_bytes);
  const bool parallel = worth_threads(M, K, D) && affordable > 1;
  const int threads = parallel ? static_cast<int>(std::min<int64_t>(ffv::max_threads(), affordable)) : 1;
  // Per-thread [D][K] accumulators of grad_mu and grad_logvar, the latter kAliasPad elements past
  // the former's end: with K * D * sizeof(C) a multiple of 4 KB (K = 2048), amu[jj] and alv[jj]
  // shared their low 12 address bits, and a load that matches an earlier store's low 12 bits
  // waits for it (4K aliasing): the backward at 2048 x 10 took ~5 % longer (one thread, Zen 4).
  constexpr int64_t kAliasPad = 24;  // elements: 96 bytes of float32
  const int64_t lv_offset = K * D + kAliasPad, stride = 2 * lv_offset;
  std::vector<C> acc(static_cast<size_t>(threads) * static_cast<size_t>(stride));
  const int64_t blocks = (M + kRowBlock - 1) / kRowBlock;
  // exp_finite where no term can be NaN: the forward's one-pass conditions, and finite gradients
  // and forward outputs.
  bool finite_terms = false;
  if constexpr (std::is_same_v<C, float>) {
    const auto finite = [](const std::vector<float>& v) {
      return std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); });
    };
    finite_terms = one_pass_applies(comp, zc, a.log_w) && finite(g) && finite(h) && finite(lq) && finite(lqj);
  }
  FFV_OMP(parallel num_threads(threads) if(parallel))
  {
    const int t = parallel ? ffv::thread_id() : 0;
    C* acc_mu = acc.data() + static_cast<size_t>(t) * static_cast<size_t>(stride);
    C* acc_lv = acc_mu + lv_offset;
    FFV_OMP(for schedule(static))
    for (int64_t b = 0; b < blocks; ++b)
      backward_block(a, b * kRowBlock, std::min(kRowBlock, M - b * kRowBlock), acc_mu, acc_lv, finite_terms);
  }
  T* grad_z_p = static_cast<T*>(grad_z_out);          // [M, D] contiguous
  T* grad_mu_p = static_cast<T*>(grad_mu_out);        // [K, D] contiguous
  T* grad_lv_p = static_cast<T*>(grad_logvar_out);    // [K, D] contiguous
  for (int64_t k = 0; k < M * D; ++k) E::store(grad_z_p + k, grad_z[k]);
  FFV_OMP(parallel for if(parallel && K * D >= ffv::kParallelCheap) schedule(static))
  for (int64_t j = 0; j < K; ++j) {
    for (int64_t d = 0; d < D; ++d) {
      C sum_mu = 0, sum_lv = 0;
      for (int t = 0; t < threads; ++t) {
        const C* base = acc.data() + static_cast<size_t>(t) * static_cast<size_t>(stride);
        sum_mu += base[d * K + j];
        sum_lv += base[lv_offset + d * K + j];
      }
      E::store(grad_mu_p + j * D + d, sum_mu);
      E::store(grad_lv_p + j * D + d, C(0.5) * sum_lv);  // acc_lv holds twice grad_logvar
    }
  }
  return FFV_OK;
}

ffv_status check_sizes(const char* entry, int64_t M, int64_t K, int64_t D) {
  FFV_CHECK(ffv::check_positive(entry, "M", M));
  FFV_CHECK(ffv::check_positive(entry, "K", K));
  FFV_CHECK(ffv::check_positive(entry, "D", D));
  return ffv::check_numel(entry, M > K ? M : K, D);
}

}  // namespace

extern "C" {

FFV_API ffv_status ffv_log_qz_forward(ffv_dtype dtype, int64_t M, int64_t K, int64_t D, const void* z, int64_t z_s0,
                                      int64_t z_s1, const void* mu, int64_t mu_s0, int64_t mu_s1,
                                      const void* logvar, int64_t logvar_s0, int64_t logvar_s1,
                                      double log_w_other, double log_w_own, double log_w_partner, void* log_qz,
                                      void* log_qzj, void* /*stream*/) {
  static const char* entry = "ffv_log_qz_forward";
  FFV_CHECK(check_sizes(entry, M, K, D));
  FFV_CHECK(ffv::check_not_null(entry, "z", z));
  FFV_CHECK(ffv::check_not_null(entry, "mu", mu));
  FFV_CHECK(ffv::check_not_null(entry, "logvar", logvar));
  FFV_CHECK(ffv::check_not_null(entry, "log_qz", log_qz));
  FFV_CHECK(ffv::check_not_null(entry, "log_qzj", log_qzj));
  const double log_w[3] = {log_w_other, log_w_own, log_w_partner};
  return ffv::guarded(entry, [&] {
    return ffv::with_dtype(entry, dtype, [&](auto tag) {
      return forward<decltype(tag)>(M, K, D, z, z_s0, z_s1, mu, mu_s0, mu_s1, logvar, logvar_s0, logvar_s1,
                                    log_w, log_qz, log_qzj);
    });
  });
}

FFV_API ffv_status ffv_log_qz_backward(ffv_dtype dtype, int64_t M, int64_t K, int64_t D, const void* grad_log_qz,
                                       int64_t grad_log_qz_s0, const void* grad_log_qzj, int64_t grad_log_qzj_s0,
                                       int64_t grad_log_qzj_s1, const void* z, int64_t z_s0, int64_t z_s1,
                                       const void* mu, int64_t mu_s0, int64_t mu_s1, const void* logvar,
                                       int64_t logvar_s0, int64_t logvar_s1, const void* log_qz,
                                       int64_t log_qz_s0, const void* log_qzj, int64_t log_qzj_s0,
                                       int64_t log_qzj_s1, double log_w_other, double log_w_own,
                                       double log_w_partner, void* grad_z, void* grad_mu, void* grad_logvar,
                                       void* /*stream*/) {
  static const char* entry = "ffv_log_qz_backward";
  FFV_CHECK(check_sizes(entry, M, K, D));
  FFV_CHECK(ffv::check_not_null(entry, "grad_log_qz", grad_log_qz));
  FFV_CHECK(ffv::check_not_null(entry, "grad_log_qzj", grad_log_qzj));
  FFV_CHECK(ffv::check_not_null(entry, "z", z));
  FFV_CHECK(ffv::check_not_null(entry, "mu", mu));
  FFV_CHECK(ffv::check_not_null(entry, "logvar", logvar));
  FFV_CHECK(ffv::check_not_null(entry, "log_qz", log_qz));
  FFV_CHECK(ffv::check_not_null(entry, "log_qzj", log_qzj));
  FFV_CHECK(ffv::check_not_null(entry, "grad_z", grad_z));
  FFV_CHECK(ffv::check_not_null(entry, "grad_mu", grad_mu));
  FFV_CHECK(ffv::check_not_null(entry, "grad_logvar", grad_logvar));
  const double log_w[3] = {log_w_other, log_w_own, log_w_partner};
  return ffv::guarded(entry, [&] {
    return ffv::with_dtype(entry, dtype, [&](auto tag) {
      return backward<decltype(tag)>(M, K, D, grad_log_qz, grad_log_qz_s0, grad_log_qzj, grad_log_qzj_s0,
                                     grad_log_qzj_s1, z, z_s0, z_s1, mu, mu_s0, mu_s1, logvar, logvar_s0,
                                     logvar_s1, log_qz, log_qz_s0, log_qzj, log_qzj_s0, log_qzj_s1, log_w,
                                     grad_z, grad_mu, grad_logvar);
    });
  });
}

}  // extern "C"
