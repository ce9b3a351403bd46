// reparameterize_kl on the CPU: reparameterised sample and Gaussian KL to N(0, I), one pass
// forward and one pass backward (formulas in kernels/include/fastfvae.h, DESIGN.md §1).
//
// forward  z[i,d] = mu[i,d] + exp(logvar[i,d]/2) * eps[i,d]   (eps given or philox_randn(seed, i*D + d))
//          kl_i   = 0.5 * sum_d (mu^2 + exp(logvar) - logvar - 1), reduced over rows
// backward grad_mu = gz + gkl_i*mu; grad_logvar = 0.5*gz*(z - mu) + 0.5*gkl_i*(exp(logvar) - 1);
//          grad_eps = gz*exp(logvar/2) — eps is never stored: z - mu = std*eps.
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
        E::store(z_tile + k, m + exp_c(C(0.5) * lv) * static_cast<C>(drawn[k]));
        terms[k] = m * m + exp_c(lv) - lv - C(1);
      }
    } else {
      const T* e_tile = eps_p + r0 * eps.s0;
      for (int64_t k = 0; k < n; ++k) {
        const C m = E::load(m_tile + k), lv = E::load(lv_tile + k), e = E::load(e_tile + k);
        E::store(z_tile + k, m + exp_c(C(0.5) * lv) * e);
        terms[k] = m * m + exp_c(lv) - lv - C(1);
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
      E::store(z_tile + k, m + exp_c(C(0.5) * lv) * e);
      terms[k] = m * m + exp_c(lv) - lv - C(1);
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
        E::store(z + i * D + d, m + exp_c(C(0.5) * lv) * e);
        row += m * m + exp_c(lv) - lv - C(1);
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
      const C* row_terms = terms + (i - r0) * D;
      C row = 0;
      for (int64_t d = 0; d < D; ++d) row += row_terms[d];
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

// Backward of rows [r0, r1). Row-major inputs take a unit-stride inner loop that vectorises.
template <typename T>
FFV_CLONES void backward_rows(int64_t r0, int64_t r1, int64_t D, Strided2 grad_z, const T* gkl_p,
                              int64_t grad_kl_s0, bool per_row_gkl, typename Element<T>::compute shared_gkl,
                              Strided2 mu, Strided2 logvar, Strided2 z, T* grad_mu, T* grad_logvar,
                              T* grad_eps) {
  using E = Element<T>;
  using C = typename E::compute;
  const T* gz_p = static_cast<const T*>(grad_z.base);
  const T* mu_p = static_cast<const T*>(mu.base);
  const T* logvar_p = static_cast<const T*>(logvar.base);
  const T* z_p = static_cast<const T*>(z.base);
  const bool unit = grad_z.s1 == 1 && mu.s1 == 1 && logvar.s1 == 1 && z.s1 == 1;
  for (int64_t i = r0; i < r1; ++i) {
    const C gkl = per_row_gkl ? E::load(gkl_p + i * grad_kl_s0) : shared_gkl;
    T* gm = grad_mu + i * D;
    T* glv = grad_logvar + i * D;
    T* ge = grad_eps ? grad_eps + i * D : nullptr;
    if (unit) {
      const T* gz_row = gz_p + i * grad_z.s0;
      const T* m_row = mu_p + i * mu.s0;
      const T* lv_row = logvar_p + i * logvar.s0;
      const T* z_row = z_p + i * z.s0;
      for (int64_t d = 0; d < D; ++d) {
        const C gz = E::load(gz_row + d), m = E::load(m_row + d), lv = E::load(lv_row + d);
        E::store(gm + d, gz + gkl * m);
        E::store(glv + d, C(0.5) * gz * (E::load(z_row + d) - m) + C(0.5) * gkl * (exp_c(lv) - C(1)));
      }
      if (ge) {
        for (int64_t d = 0; d < D; ++d) E::store(ge + d, E::load(gz_row + d) * exp_c(C(0.5) * E::load(lv_row + d)));
      }
      continue;
    }
    for (int64_t d = 0; d < D; ++d) {
      const C gz = E::load(gz_p + i * grad_z.s0 + d * grad_z.s1);
      const C m = E::load(mu_p + i * mu.s0 + d * mu.s1);
      const C lv = E::load(logvar_p + i * logvar.s0 + d * logvar.s1);
      const C zz = E::load(z_p + i * z.s0 + d * z.s1);
      E::store(gm + d, gz + gkl * m);
      E::store(glv + d, C(0.5) * gz * (zz - m) + C(0.5) * gkl * (exp_c(lv) - C(1)));
      if (ge) E::store(ge + d, gz * exp_c(C(0.5) * lv));
    }
  }
}

template <typename T>
ffv_status backward(int64_t B, int64_t D, Strided2 grad_z, const void* grad_kl_base, int64_t grad_kl_s0,
                    int32_t reduction, Strided2 mu, Strided2 logvar, Strided2 z, void* grad_mu_out,
                    void* grad_logvar_out, void* grad_eps_out) {
  using E = Element<T>;
  using C = typename E::compute;
  const T* gkl_p = static_cast<const T*>(grad_kl_base);  // [B] (NONE, stride grad_kl_s0) or [1]
  T* grad_mu = static_cast<T*>(grad_mu_out);              // [B, D] contiguous
  T* grad_logvar = static_cast<T*>(grad_logvar_out);      // [B, D] contiguous
  T* grad_eps = static_cast<T*>(grad_eps_out);            // [B, D] contiguous, or NULL
  // gkl_i for MEAN/SUM is one number: the reduced KL's gradient, scaled by 1/B for the mean.
  const bool per_row_gkl = reduction == FFV_REDUCTION_NONE;
  C shared_gkl = per_row_gkl ? C(0) : E::load(gkl_p);
  if (reduction == FFV_REDUCTION_MEAN) shared_gkl *= static_cast<C>(1.0 / static_cast<double>(B));
  const int64_t block_rows = std::max<int64_t>(1, 4096 / D);
  const int64_t blocks = (B + block_rows - 1) / block_rows;

  FFV_OMP(parallel for if(B * D >= ffv::kParallelCheap) schedule(static))
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t r0 = block * block_rows;
    backward_rows<T>(r0, std::min(B, r0 + block_rows), D, grad_z, gkl_p, grad_kl_s0, per_row_gkl, shared_gkl, mu,
                     logvar, z, grad_mu, grad_logvar, grad_eps);
  }
  return FFV_OK;
}

}  // namespace

extern "C" {

FFV_API ffv_status ffv_reparameterize_kl_forward(ffv_dtype dtype, int64_t B, int64_t D, const void* mu,
                                                 int64_t mu_s0, int64_t mu_s1, const void* logvar,
                                                 int64_t logvar_s0, int64_t logvar_s1, const void* eps,
                                                 int64_t eps_s0, int64_t eps_s1, const int64_t* seed,
                                                 int32_t reduction, void* z, void* kl, void* /*stream*/) {
  static const char* entry = "ffv_reparameterize_kl_forward";
  FFV_CHECK(ffv::check_positive(entry, "B", B));
  FFV_CHECK(ffv::check_positive(entry, "D", D));
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
                                                  int64_t logvar_s0, int64_t logvar_s1, const void* z,
                                                  int64_t z_s0, int64_t z_s1, void* grad_mu, void* grad_logvar,
                                                  void* grad_eps, void* /*stream*/) {
  static const char* entry = "ffv_reparameterize_kl_backward";
  FFV_CHECK(ffv::check_positive(entry, "B", B));
  FFV_CHECK(ffv::check_positive(entry, "D", D));
  FFV_CHECK(ffv::check_not_null(entry, "grad_z", grad_z));
  FFV_CHECK(ffv::check_not_null(entry, "grad_kl", grad_kl));
  FFV_CHECK(ffv::check_reduction(entry, reduction));
  FFV_CHECK(ffv::check_not_null(entry, "mu", mu));
  FFV_CHECK(ffv::check_not_null(entry, "logvar", logvar));
  FFV_CHECK(ffv::check_not_null(entry, "z", z));
  FFV_CHECK(ffv::check_not_null(entry, "grad_mu", grad_mu));
  FFV_CHECK(ffv::check_not_null(entry, "grad_logvar", grad_logvar));
  return ffv::guarded(entry, [&] {
    return ffv::with_dtype(entry, dtype, [&](auto tag) {
      return backward<decltype(tag)>(B, D, {grad_z, grad_z_s0, grad_z_s1}, grad_kl, grad_kl_s0, reduction,
                                     {mu, mu_s0, mu_s1}, {logvar, logvar_s0, logvar_s1}, {z, z_s0, z_s1},
                                     grad_mu, grad_logvar, grad_eps);
    });
  });
}

}  // extern "C"
