// reparameterize_kl on the CPU: reparameterised sample and Gaussian KL to N(0, I), one pass
// forward and one pass backward (formulas in kernels/include/fastfvae.h, DESIGN.md §1).
//
// forward  z[i,d] = mu[i,d] + exp(logvar[i,d]/2) * eps[i,d]   (eps given or philox_randn(seed, i*D + d))
//          kl_i   = 0.5 * sum_d (mu^2 + exp(logvar) - logvar - 1), reduced over rows
// backward grad_mu = gz + gkl_i*mu; grad_logvar = 0.5*gz*std*eps + 0.5*gkl_i*(exp(logvar) - 1);
//          grad_eps = gz*std, std = exp(logvar/2). A drawn eps is not stored: the backward
//          regenerates it from the same seed and counters (Philox is counter-based).
// exp(logvar) is computed as std*std: one exp an element instead of two, as these loops are
// bound by exp on the CPU, not by memory (cpu_math's exp runs at ~2 G/s a thread, 16384 x 64
// elements read and written at ~20 GB/s take about as long as one exp each). std*std overflows
// to inf where exp(logvar) does (to rounding at the boundary, logvar ~ 88.7), z is unchanged, and
// the KL term moves by about an ulp of exp.
#include <algorithm>
#include <cmath>

#include "cpu_common.h"
#include "cpu_math.h"
#include "philox.h"

namespace {

using ffv::Element;
using ffv::cpu_math::exp_c;

struct Strided2 {  // a read-only (rows, cols) view: element (i, d) at base[i*s0 + d*s1]
  const void* base;
  int64_t s0, s1;
  bool row_major(int64_t D) const { return s1 == 1 && (s0 == D || D == 1); }
};

// Elements per forward tile: the tile's eps and KL terms live in stack buffers.
constexpr int64_t kTileElements = 2048;

// Forward of rows [r0, r1) (at most kTileElements elements): writes z and terms[k] =
// mu^2 + exp(logvar) - logvar - 1 for the tile's k-th element (row-major). Row-major inputs take
// flat loops that the compiler vectorises (Philox, exp, log, cos included); others go strided.
template <typename T>
FFV_CLONES void forward_tile(int64_t r0, int64_t r1, int64_t D, Strided2 mu, Strided2 logvar, Strided2 eps,
                             uint64_t key, T* z, typename Element<T>::compute* terms) {
  using E = Element<T>;
  using C = typename E::compute;
  const T* mu_p = static_cast<const T*>(mu.base);
  const T* logvar_p = static_cast<const T*>(logvar.base);
  const T* eps_p = static_cast<const T*>(eps.base);
  const int64_t n = (r1 - r0) * D;
  const int64_t first = r0 * D;  // global element index of the tile's first element
  T* z_tile = z + first;
  if (mu.row_major(D) && logvar.row_major(D) && (eps_p == nullptr || eps.row_major(D))) {
    const T* m_tile = mu_p + r0 * mu.s0;
    const T* lv_tile = logvar_p + r0 * logvar.s0;
    if (eps_p == nullptr) {
      float drawn[kTileElements];
      ffv::cpu_math::fill_randn_f32(key, static_cast<uint64_t>(first), n, drawn);
      for (int64_t k = 0; k < n; ++k) {
        const C m = E::load(m_tile + k), lv = E::load(lv_tile + k);
        const C std_dev = exp_c(C(0.5) * lv);
        E::store(z_tile + k, m + std_dev * static_cast<C>(drawn[k]));
        terms[k] = m * m + std_dev * std_dev - lv - C(1);
      }
    } else {
      const T* e_tile = eps_p + r0 * eps.s0;
      for (int64_t k = 0; k < n; ++k) {
        const C m = E::load(m_tile + k), lv = E::load(lv_tile + k), e = E::load(e_tile + k);
        const C std_dev = exp_c(C(0.5) * lv);
        E::store(z_tile + k, m + std_dev * e);
        terms[k] = m * m + std_dev * std_dev - lv - C(1);
      }
    }
    return;
  }
  for (int64_t i = r0; i < r1; ++i) {
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = (i - r0) * D + d;
      const C m = E::load(mu_p + i * mu.s0 + d * mu.s1);
      const C lv = E::load(logvar_p + i * logvar.s0 + d * logvar.s1);
      const C e = eps_p ? E::load(eps_p + i * eps.s0 + d * eps.s1)
                        : static_cast<C>(ffv::cpu_math::randn_f32(key, static_cast<uint64_t>(first + k)));
      const C std_dev = exp_c(C(0.5) * lv);
      E::store(z_tile + k, m + std_dev * e);
      terms[k] = m * m + std_dev * std_dev - lv - C(1);
    }
  }
}

template <typename T>
ffv_status forward(int64_t B, int64_t D, Strided2 mu, Strided2 logvar, Strided2 eps, const int64_t* seed,
                   int32_t reduction, void* z_out, void* kl_out) {
  using E = Element<T>;
  using C = typename E::compute;
  T* z = static_cast<T*>(z_out);    // [B, D] contiguous
  T* kl = static_cast<T*>(kl_out);  // [B] (NONE) or [1]
  const uint64_t key = eps.base ? 0 : static_cast<uint64_t>(*seed);
  const bool per_row_out = reduction == FFV_REDUCTION_NONE;
  const bool parallel = B * D >= (eps.base ? ffv::kParallelCheap : ffv::kParallelExpensive);

  if (D > kTileElements) {  // very wide rows: one row at a time, strided, no tile buffers
    const double total = ffv::chunked_row_sum(B, parallel, [&](int64_t i) -> double {
      C row = 0;
      for (int64_t d = 0; d < D; ++d) {
        const C m = E::load(static_cast<const T*>(mu.base) + i * mu.s0 + d * mu.s1);
        const C lv = E::load(static_cast<const T*>(logvar.base) + i * logvar.s0 + d * logvar.s1);
        const C e = eps.base ? E::load(static_cast<const T*>(eps.base) + i * eps.s0 + d * eps.s1)
                             : static_cast<C>(ffv::cpu_math::randn_f32(key, static_cast<uint64_t>(i * D + d)));
        const C std_dev = exp_c(C(0.5) * lv);
        E::store(z + i * D + d, m + std_dev * e);
        row += m * m + std_dev * std_dev - lv - C(1);
      }
      row *= C(0.5);
      if (per_row_out) E::store(kl + i, row);
      return static_cast<double>(row);
    });
    if (reduction != FFV_REDUCTION_NONE)
      E::store(kl, static_cast<C>(reduction == FFV_REDUCTION_MEAN ? total / static_cast<double>(B) : total));
    return FFV_OK;
  }

  const int64_t tile_rows = kTileElements / D;
  const int64_t tiles = (B + tile_rows - 1) / tile_rows;
  const double total = ffv::chunked_sum(tiles, parallel, [&](int64_t tile) -> double {
    C terms[kTileElements];
    const int64_t r0 = tile * tile_rows;
    const int64_t r1 = r0 + tile_rows < B ? r0 + tile_rows : B;
    forward_tile<T>(r0, r1, D, mu, logvar, eps, key, z, terms);
    double sum = 0.0;
    for (int64_t i = r0; i < r1; ++i) {
      // eight running sums (cpu_common.h's range_sum): one dependent chain was a fifth of the forward
      const C* row_terms = terms + (i - r0) * D;
      C row = ffv::range_sum<C>(0, D, [row_terms](int64_t d) { return row_terms[d]; });
      row *= C(0.5);
      if (per_row_out) E::store(kl + i, row);
      sum += static_cast<double>(row);
    }
    return sum;
  });
  if (reduction == FFV_REDUCTION_MEAN) E::store(kl, static_cast<C>(total / static_cast<double>(B)));
  if (reduction == FFV_REDUCTION_SUM) E::store(kl, static_cast<C>(total));
  return FFV_OK;
}

// The inputs of one backward call, shared by its tiles.
template <typename T>
struct BackwardArgs {
  using C = typename Element<T>::compute;
  int64_t D;
  Strided2 grad_z;          // [B, D] strided: dL/dz
  const T* grad_kl;         // [B] (NONE, stride grad_kl_s0) or [1]: dL/dkl
  int64_t grad_kl_s0;
  bool per_row_gkl;         // NONE: gkl_i = grad_kl[i]; else every row uses shared_gkl
  C shared_gkl;             // grad_kl[0], divided by B for MEAN
  Strided2 mu, logvar;      // [B, D] strided
  Strided2 eps;             // [B, D] strided given noise, or base NULL: regenerate from key
  uint64_t key;             // Philox seed of the forward's draw (used when eps.base is NULL)
  T* grad_mu;               // [B, D] contiguous out
  T* grad_logvar;           // [B, D] contiguous out
  T* grad_eps;              // [B, D] contiguous out, or NULL
};

// The backward of n consecutive unit-stride elements of one row (pointers at the first one):
//   std = exp(logvar/2); grad_mu = gz + gkl*mu;
//   grad_logvar = 0.5*gz*std*eps + 0.5*gkl*(exp(logvar) - 1); grad_eps = gz*std (kGradEps).
// eps_at(k) gives the k-th eps in the compute type. No branch inside the loop (the eps source
// and grad_eps are template arguments), so GCC vectorises it in every FFV_CLONES clone.
template <typename T, bool kGradEps, typename EpsAt>
FFV_INLINE void backward_unit_run(int64_t n, typename Element<T>::compute gkl, const T* gz_p, const T* mu_p,
                                  const T* logvar_p, EpsAt eps_at, T* grad_mu, T* grad_logvar, T* grad_eps) {
  using E = Element<T>;
  using C = typename E::compute;
  for (int64_t k = 0; k < n; ++k) {
    const C gz = E::load(gz_p + k), m = E::load(mu_p + k), lv = E::load(logvar_p + k);
    const C std_dev = exp_c(C(0.5) * lv);
    E::store(grad_mu + k, gz + gkl * m);
    E::store(grad_logvar + k, C(0.5) * gz * std_dev * eps_at(k) + C(0.5) * gkl * (std_dev * std_dev - C(1)));
    if constexpr (kGradEps) E::store(grad_eps + k, gz * std_dev);
  }
}

// Backward of the block rows [r0, r1) x columns [d0, d1) — whole rows (d0 = 0, d1 = D), or a
// part of one row when D > kTileElements — so its elements have the consecutive global indices
// r0*D + d0 ... and a drawn eps is regenerated in one vectorised fill (the forward's counters).
// Formulas in backward_unit_run. std*eps is never rebuilt as z - mu: z is rounded (bfloat16 has
// 8 bits) and inf - inf is NaN.
template <typename T>
FFV_CLONES void backward_block(const BackwardArgs<T>& a, int64_t r0, int64_t r1, int64_t d0, int64_t d1) {
  using E = Element<T>;
  using C = typename E::compute;
  const T* gz_p = static_cast<const T*>(a.grad_z.base);
  const T* mu_p = static_cast<const T*>(a.mu.base);
  const T* logvar_p = static_cast<const T*>(a.logvar.base);
  const T* eps_p = static_cast<const T*>(a.eps.base);
  const int64_t width = d1 - d0;
  float drawn[kTileElements];  // the block's regenerated eps (row-major), when eps is not given
  if (eps_p == nullptr)
    ffv::cpu_math::fill_randn_f32(a.key, static_cast<uint64_t>(r0 * a.D + d0), (r1 - r0) * width, drawn);
  const bool unit = a.grad_z.s1 == 1 && a.mu.s1 == 1 && a.logvar.s1 == 1 && (eps_p == nullptr || a.eps.s1 == 1);
  for (int64_t i = r0; i < r1; ++i) {
    const C gkl = a.per_row_gkl ? E::load(a.grad_kl + i * a.grad_kl_s0) : a.shared_gkl;
    T* gm = a.grad_mu + i * a.D;
    T* glv = a.grad_logvar + i * a.D;
    const float* drawn_row = drawn + (i - r0) * width;  // drawn_row[d - d0] for d in [d0, d1)
    if (unit) {  // unit-stride rows: branch-free loops the compiler vectorises
      const T* gz_row = gz_p + i * a.grad_z.s0 + d0;
      const T* m_row = mu_p + i * a.mu.s0 + d0;
      const T* lv_row = logvar_p + i * a.logvar.s0 + d0;
      T* ge_row = a.grad_eps ? a.grad_eps + i * a.D + d0 : nullptr;
      // (No helper lambda around these calls: a lambda's body is not compiled for the FFV_CLONES
      // targets, and the loop would run the baseline x86-64 code.)
      const T* e_row = eps_p ? eps_p + i * a.eps.s0 + d0 : nullptr;
      const auto drawn_at = [drawn_row](int64_t k) { return static_cast<C>(drawn_row[k]); };
      const auto given_at = [e_row](int64_t k) { return E::load(e_row + k); };
      if (e_row && ge_row)
        backward_unit_run<T, true>(width, gkl, gz_row, m_row, lv_row, given_at, gm + d0, glv + d0, ge_row);
      else if (e_row)
        backward_unit_run<T, false>(width, gkl, gz_row, m_row, lv_row, given_at, gm + d0, glv + d0, nullptr);
      else if (ge_row)
        backward_unit_run<T, true>(width, gkl, gz_row, m_row, lv_row, drawn_at, gm + d0, glv + d0, ge_row);
      else
        backward_unit_run<T, false>(width, gkl, gz_row, m_row, lv_row, drawn_at, gm + d0, glv + d0, nullptr);
      continue;
    }
    for (int64_t d = d0; d < d1; ++d) {
      const C gz = E::load(gz_p + i * a.grad_z.s0 + d * a.grad_z.s1);
      const C m = E::load(mu_p + i * a.mu.s0 + d * a.mu.s1);
      const C lv = E::load(logvar_p + i * a.logvar.s0 + d * a.logvar.s1);
      const C e = eps_p ? E::load(eps_p + i * a.eps.s0 + d * a.eps.s1) : static_cast<C>(drawn_row[d - d0]);
      const C std_dev = exp_c(C(0.5) * lv);
      E::store(gm + d, gz + gkl * m);
      E::store(glv + d, C(0.5) * gz * std_dev * e + C(0.5) * gkl * (std_dev * std_dev - C(1)));
      if (a.grad_eps) E::store(a.grad_eps + i * a.D + d, gz * std_dev);
    }
  }
}

template <typename T>
ffv_status backward(int64_t B, int64_t D, Strided2 grad_z, const void* grad_kl_base, int64_t grad_kl_s0,
                    int32_t reduction, Strided2 mu, Strided2 logvar, Strided2 eps, const int64_t* seed,
                    void* grad_mu_out, void* grad_logvar_out, void* grad_eps_out) {
  using E = Element<T>;
  using C = typename E::compute;
  BackwardArgs<T> a{};
  a.D = D;
  a.grad_z = grad_z;
  a.grad_kl = static_cast<const T*>(grad_kl_base);
  a.grad_kl_s0 = grad_kl_s0;
  // gkl_i for MEAN/SUM is one number: the reduced KL's gradient, scaled by 1/B for the mean.
  a.per_row_gkl = reduction == FFV_REDUCTION_NONE;
  a.shared_gkl = a.per_row_gkl ? C(0) : E::load(a.grad_kl);
  if (reduction == FFV_REDUCTION_MEAN) a.shared_gkl *= static_cast<C>(1.0 / static_cast<double>(B));
  a.mu = mu;
  a.logvar = logvar;
  a.eps = eps;
  a.key = eps.base ? 0 : static_cast<uint64_t>(*seed);
  a.grad_mu = static_cast<T*>(grad_mu_out);
  a.grad_logvar = static_cast<T*>(grad_logvar_out);
  a.grad_eps = static_cast<T*>(grad_eps_out);
  const bool parallel = B * D >= (eps.base ? ffv::kParallelCheap : ffv::kParallelExpensive);

  if (D > kTileElements) {  // very wide rows: each row in column blocks of kTileElements
    const int64_t column_blocks = (D + kTileElements - 1) / kTileElements;
    FFV_OMP(parallel for if(parallel) schedule(static))
    for (int64_t block = 0; block < B * column_blocks; ++block) {
      const int64_t i = block / column_blocks, d0 = (block % column_blocks) * kTileElements;
      backward_block<T>(a, i, i + 1, d0, std::min(D, d0 + kTileElements));
    }
    return FFV_OK;
  }
  const int64_t tile_rows = kTileElements / D;
  const int64_t tiles = (B + tile_rows - 1) / tile_rows;
  FFV_OMP(parallel for if(parallel) schedule(static))
  for (int64_t tile = 0; tile < tiles; ++tile) {
    const int64_t r0 = tile * tile_rows;
    backward_block<T>(a, r0, std::min(B, r0 + tile_rows), 0, D);
  }
  return FFV_OK;
}

}  // namespace

extern "C" {

FFV_API ffv_status ffv_reparameterize_kl_forward(ffv_dtype dtype, int64_t B, int64_t D, const void* mu,
                                                 int64_t mu_s0, int64_t mu_s1, const void* logvar,
                                                 int64_t logvar_s0, int64_t logvar_s1, const void* eps,
                                                 int64_t eps_s0, int64_t eps_s1, const int64_t* seed,
                                                 int32_t reduction, void* z, void* kl, void* /*workspace*/,
                                                 int64_t /*workspace_bytes*/, void* /*stream*/) {
  static const char* entry = "ffv_reparameterize_kl_forward";
  FFV_CHECK(ffv::check_positive(entry, "B", B));
  FFV_CHECK(ffv::check_positive(entry, "D", D));
  FFV_CHECK(ffv::check_numel(entry, B, D));
  FFV_CHECK(ffv::check_not_null(entry, "mu", mu));
  FFV_CHECK(ffv::check_not_null(entry, "logvar", logvar));
  if (eps == nullptr) FFV_CHECK(ffv::check_not_null(entry, "seed (needed when eps is NULL)", seed));
  FFV_CHECK(ffv::check_reduction(entry, reduction));
  FFV_CHECK(ffv::check_not_null(entry, "z", z));
  FFV_CHECK(ffv::check_not_null(entry, "kl", kl));
  return ffv::guarded(entry, [&] {
    return ffv::with_dtype(entry, dtype, [&](auto tag) {
      return forward<decltype(tag)>(B, D, {mu, mu_s0, mu_s1}, {logvar, logvar_s0, logvar_s1},
                                    {eps, eps_s0, eps_s1}, seed, reduction, z, kl);
    });
  });
}

FFV_API ffv_status ffv_reparameterize_kl_backward(ffv_dtype dtype, int64_t B, int64_t D, const void* grad_z,
                                                  int64_t grad_z_s0, int64_t grad_z_s1, const void* grad_kl,
                                                  int64_t grad_kl_s0, int32_t reduction, const void* mu,
                                                  int64_t mu_s0, int64_t mu_s1, const void* logvar,
                                                  int64_t logvar_s0, int64_t logvar_s1, const void* eps,
                                                  int64_t eps_s0, int64_t eps_s1, const int64_t* seed,
                                                  void* grad_mu, void* grad_logvar, void* grad_eps,
                                                  void* /*stream*/) {
  static const char* entry = "ffv_reparameterize_kl_backward";
  FFV_CHECK(ffv::check_positive(entry, "B", B));
  FFV_CHECK(ffv::check_positive(entry, "D", D));
  FFV_CHECK(ffv::check_numel(entry, B, D));
  FFV_CHECK(ffv::check_not_null(entry, "grad_z", grad_z));
  FFV_CHECK(ffv::check_not_null(entry, "grad_kl", grad_kl));
  FFV_CHECK(ffv::check_reduction(entry, reduction));
  FFV_CHECK(ffv::check_not_null(entry, "mu", mu));
  FFV_CHECK(ffv::check_not_null(entry, "logvar", logvar));
  if (eps == nullptr) FFV_CHECK(ffv::check_not_null(entry, "seed (needed when eps is NULL)", seed));
  FFV_CHECK(ffv::check_not_null(entry, "grad_mu", grad_mu));
  FFV_CHECK(ffv::check_not_null(entry, "grad_logvar", grad_logvar));
  return ffv::guarded(entry, [&] {
    return ffv::with_dtype(entry, dtype, [&](auto tag) {
      return backward<decltype(tag)>(B, D, {grad_z, grad_z_s0, grad_z_s1}, grad_kl, grad_kl_s0, reduction,
                                     {mu, mu_s0, mu_s1}, {logvar, logvar_s0, logvar_s1}, {eps, eps_s0, eps_s1},
                                     seed, grad_mu, grad_logvar, grad_eps);
    });
  });
}

// No workspace on the CPU: the query exists because both libraries export the same ABI
// (fastfvae.h); the forward ignores its workspace arguments.
FFV_API ffv_status ffv_reparameterize_kl_workspace_bytes(ffv_dtype /*dtype*/, int64_t /*B*/, int64_t /*D*/, int32_t /*reduction*/, int64_t* bytes) {
  FFV_CHECK(ffv::check_not_null("ffv_reparameterize_kl_workspace_bytes", "bytes", bytes));
  *bytes = 0;
  return FFV_OK;
}

}  // extern "C"
