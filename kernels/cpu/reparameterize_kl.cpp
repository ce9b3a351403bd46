// reparameterize_kl on the CPU: reparameterised sample and Gaussian KL to N(0, I), one pass
// forward and one pass backward (formulas in kernels/include/fastfvae.h, DESIGN.md §1).
//
// forward  z[i,d] = mu[i,d] + exp(logvar[i,d]/2) * eps[i,d]   (eps given or philox_randn(seed, i*D + d))
//          kl_i   = 0.5 * sum_d (mu^2 + exp(logvar) - logvar - 1), reduced over rows
// backward grad_mu = gz + gkl_i*mu; grad_logvar = 0.5*gz*(z - mu) + 0.5*gkl_i*(exp(logvar) - 1);
//          grad_eps = gz*exp(logvar/2) — eps is never stored: z - mu = std*eps.
#include <cmath>

#include "cpu_common.h"
#include "philox.h"

namespace {

using ffv::Element;

struct Strided2 {  // a read-only (rows, cols) view: element (i, d) at base[i*s0 + d*s1]
  const void* base;
  int64_t s0, s1;
};

template <typename T>
ffv_status forward(int64_t B, int64_t D, Strided2 mu, Strided2 logvar, Strided2 eps, const int64_t* seed,
                   int32_t reduction, void* z_out, void* kl_out) {
  using E = Element<T>;
  using C = typename E::compute;
  const T* mu_p = static_cast<const T*>(mu.base);
  const T* logvar_p = static_cast<const T*>(logvar.base);
  const T* eps_p = static_cast<const T*>(eps.base);  // NULL: draw eps in-kernel
  T* z = static_cast<T*>(z_out);                      // [B, D] contiguous
  T* kl = static_cast<T*>(kl_out);                    // [B] (NONE) or [1]
  const uint64_t key = eps_p ? 0 : static_cast<uint64_t>(*seed);
  const bool per_row_out = reduction == FFV_REDUCTION_NONE;
  const int64_t work = B * D;
  const bool parallel = work >= (eps_p ? ffv::kParallelCheap : ffv::kParallelRandom);

  const double total = ffv::chunked_row_sum(B, parallel, [&](int64_t i) -> double {
    C row = 0;
    for (int64_t d = 0; d < D; ++d) {
      const C m = E::load(mu_p + i * mu.s0 + d * mu.s1);
      const C lv = E::load(logvar_p + i * logvar.s0 + d * logvar.s1);
      const C e = eps_p ? E::load(eps_p + i * eps.s0 + d * eps.s1)
                        : static_cast<C>(ffv::philox_randn(key, static_cast<uint64_t>(i * D + d)));
      E::store(z + i * D + d, m + std::exp(C(0.5) * lv) * e);
      row += m * m + std::exp(lv) - lv - C(1);
    }
    row *= C(0.5);
    if (per_row_out) E::store(kl + i, row);
    return static_cast<double>(row);
  });
  if (reduction == FFV_REDUCTION_MEAN) E::store(kl, static_cast<C>(total / static_cast<double>(B)));
  if (reduction == FFV_REDUCTION_SUM) E::store(kl, static_cast<C>(total));
  return FFV_OK;
}

template <typename T>
ffv_status backward(int64_t B, int64_t D, Strided2 grad_z, const void* grad_kl_base, int64_t grad_kl_s0,
                    int32_t reduction, Strided2 mu, Strided2 logvar, Strided2 z, void* grad_mu_out,
                    void* grad_logvar_out, void* grad_eps_out) {
  using E = Element<T>;
  using C = typename E::compute;
  const T* gz_p = static_cast<const T*>(grad_z.base);
  const T* gkl_p = static_cast<const T*>(grad_kl_base);  // [B] (NONE, stride grad_kl_s0) or [1]
  const T* mu_p = static_cast<const T*>(mu.base);
  const T* logvar_p = static_cast<const T*>(logvar.base);
  const T* z_p = static_cast<const T*>(z.base);
  T* grad_mu = static_cast<T*>(grad_mu_out);          // [B, D] contiguous
  T* grad_logvar = static_cast<T*>(grad_logvar_out);  // [B, D] contiguous
  T* grad_eps = static_cast<T*>(grad_eps_out);        // [B, D] contiguous, or NULL
  // gkl_i for MEAN/SUM is one number: the reduced KL's gradient, scaled by 1/B for the mean.
  C shared_gkl = reduction == FFV_REDUCTION_NONE ? C(0) : E::load(gkl_p);
  if (reduction == FFV_REDUCTION_MEAN) shared_gkl *= static_cast<C>(1.0 / static_cast<double>(B));
  const bool parallel = B * D >= ffv::kParallelCheap;

  FFV_OMP(parallel for if(parallel) schedule(static))
  for (int64_t i = 0; i < B; ++i) {
    const C gkl = reduction == FFV_REDUCTION_NONE ? E::load(gkl_p + i * grad_kl_s0) : shared_gkl;
    for (int64_t d = 0; d < D; ++d) {
      const C gz = E::load(gz_p + i * grad_z.s0 + d * grad_z.s1);
      const C m = E::load(mu_p + i * mu.s0 + d * mu.s1);
      const C lv = E::load(logvar_p + i * logvar.s0 + d * logvar.s1);
      const C zz = E::load(z_p + i * z.s0 + d * z.s1);
      E::store(grad_mu + i * D + d, gz + gkl * m);
      E::store(grad_logvar + i * D + d, C(0.5) * gz * (zz - m) + C(0.5) * gkl * (std::exp(lv) - C(1)));
      if (grad_eps) E::store(grad_eps + i * D + d, gz * std::exp(C(0.5) * lv));
    }
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
