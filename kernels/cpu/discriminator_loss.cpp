// discriminator_loss on the CPU: the discriminator's loss on logits of z ~ q(z) ("real") and of
// permute_dims(z') ("perm") (DESIGN.md §1).
//
// forward  K = 2: loss = 0.5 * (mean_i CE(real_i, class 0) + mean_i CE(perm_i, class 1))
//          K = 1: loss = 0.5 * (mean_i BCE(real_i, 1) + mean_i BCE(perm_i, 0)), the logit being
//                 that of "from q(z)"
// backward s = g * 0.5 / B;  K = 2: grad_real = s*(softmax(real_i) - e0), grad_perm = s*(softmax(perm_i) - e1)
//                            K = 1: grad_real = s*(sigmoid(real_i) - 1), grad_perm = s*sigmoid(perm_i)
// The formulas follow PyTorch's (log_softmax with the max subtracted; BCE-with-logits as
// (1 - y)*x - log_sigmoid(x)) so that NaN and Inf propagate exactly as in the reference.
#include <cmath>

#include "cpu_common.h"

namespace {

using ffv::Element;

// Cross-entropy of two logits (a, b) against class `target` (0 or 1), as PyTorch computes it.
template <typename C>
inline C cross_entropy2(C a, C b, int target) {
  const C m = a > b ? a : b;
  const C log_sum = std::log(std::exp(a - m) + std::exp(b - m));
  return (m - (target == 0 ? a : b)) + log_sum;
}

// BCE with logits against label y in {0, 1}: (1 - y)*x - log_sigmoid(x).
template <typename C>
inline C bce_with_logits(C x, C y) {
  const C log_sigmoid = (x < C(0) ? x : C(0)) - std::log1p(std::exp(-std::fabs(x)));
  return (C(1) - y) * x - log_sigmoid;
}

template <typename T>
ffv_status forward(int64_t B, int64_t K, const void* real_base, int64_t r0, int64_t r1, const void* perm_base,
                   int64_t p0, int64_t p1, void* loss_out) {
  using E = Element<T>;
  using C = typename E::compute;
  const T* real = static_cast<const T*>(real_base);  // [B, K], element (i, k) at i*r0 + k*r1
  const T* perm = static_cast<const T*>(perm_base);  // [B, K], element (i, k) at i*p0 + k*p1
  const double sum = ffv::chunked_row_sum(B, B * K >= ffv::kParallelExpensive, [&](int64_t i) -> double {
    C real_loss, perm_loss;
    if (K == 2) {
      real_loss = cross_entropy2(E::load(real + i * r0), E::load(real + i * r0 + r1), 0);
      perm_loss = cross_entropy2(E::load(perm + i * p0), E::load(perm + i * p0 + p1), 1);
    } else {
      real_loss = bce_with_logits(E::load(real + i * r0), C(1));
      perm_loss = bce_with_logits(E::load(perm + i * p0), C(0));
    }
    return static_cast<double>(real_loss) + static_cast<double>(perm_loss);
  });
  E::store(static_cast<T*>(loss_out), static_cast<C>(0.5 * sum / static_cast<double>(B)));  // [1]
  return FFV_OK;
}

// softmax(a, b) as PyTorch computes it (max subtracted), both probabilities.
template <typename C>
inline void softmax2(C a, C b, C* p_a, C* p_b) {
  const C m = a > b ? a : b;
  const C e_a = std::exp(a - m), e_b = std::exp(b - m);
  const C total = e_a + e_b;
  *p_a = e_a / total;
  *p_b = e_b / total;
}

template <typename T>
ffv_status backward(int64_t B, int64_t K, const void* grad_loss, const void* real_base, int64_t r0, int64_t r1,
                    const void* perm_base, int64_t p0, int64_t p1, void* grad_real_out, void* grad_perm_out) {
  using E = Element<T>;
  using C = typename E::compute;
  const T* real = static_cast<const T*>(real_base);
  const T* perm = static_cast<const T*>(perm_base);
  T* grad_real = static_cast<T*>(grad_real_out);  // [B, K] contiguous
  T* grad_perm = static_cast<T*>(grad_perm_out);  // [B, K] contiguous
  const C scale = E::load(static_cast<const T*>(grad_loss)) * C(0.5) / static_cast<C>(B);
  FFV_OMP(parallel for if(B * K >= ffv::kParallelExpensive) schedule(static))
  for (int64_t i = 0; i < B; ++i) {
    if (K == 2) {
      C q0, q1;
      softmax2(E::load(real + i * r0), E::load(real + i * r0 + r1), &q0, &q1);
      E::store(grad_real + 2 * i, (q0 - C(1)) * scale);
      E::store(grad_real + 2 * i + 1, q1 * scale);
      softmax2(E::load(perm + i * p0), E::load(perm + i * p0 + p1), &q0, &q1);
      E::store(grad_perm + 2 * i, q0 * scale);
      E::store(grad_perm + 2 * i + 1, (q1 - C(1)) * scale);
    } else {
      const C sig_real = C(1) / (C(1) + std::exp(-E::load(real + i * r0)));
      const C sig_perm = C(1) / (C(1) + std::exp(-E::load(perm + i * p0)));
      E::store(grad_real + i, (sig_real - C(1)) * scale);
      E::store(grad_perm + i, sig_perm * scale);
    }
  }
  return FFV_OK;
}

}  // namespace

extern "C" {

FFV_API ffv_status ffv_discriminator_loss_forward(ffv_dtype dtype, int64_t B, int64_t K, const void* d_real,
                                                  int64_t d_real_s0, int64_t d_real_s1, const void* d_perm,
                                                  int64_t d_perm_s0, int64_t d_perm_s1, void* loss,
                                                  void* /*stream*/) {
  static const char* entry = "ffv_discriminator_loss_forward";
  FFV_CHECK(ffv::check_positive(entry, "B", B));
  FFV_CHECK(ffv::check_logit_count(entry, K));
  FFV_CHECK(ffv::check_not_null(entry, "d_real", d_real));
  FFV_CHECK(ffv::check_not_null(entry, "d_perm", d_perm));
  FFV_CHECK(ffv::check_not_null(entry, "loss", loss));
  return ffv::guarded(entry, [&] {
    return ffv::with_dtype(entry, dtype, [&](auto tag) {
      return forward<decltype(tag)>(B, K, d_real, d_real_s0, d_real_s1, d_perm, d_perm_s0, d_perm_s1, loss);
    });
  });
}

FFV_API ffv_status ffv_discriminator_loss_backward(ffv_dtype dtype, int64_t B, int64_t K, const void* grad_loss,
                                                   const void* d_real, int64_t d_real_s0, int64_t d_real_s1,
                                                   const void* d_perm, int64_t d_perm_s0, int64_t d_perm_s1,
                                                   void* grad_real, void* grad_perm, void* /*stream*/) {
  static const char* entry = "ffv_discriminator_loss_backward";
  FFV_CHECK(ffv::check_positive(entry, "B", B));
  FFV_CHECK(ffv::check_logit_count(entry, K));
  FFV_CHECK(ffv::check_not_null(entry, "grad_loss", grad_loss));
  FFV_CHECK(ffv::check_not_null(entry, "d_real", d_real));
  FFV_CHECK(ffv::check_not_null(entry, "d_perm", d_perm));
  FFV_CHECK(ffv::check_not_null(entry, "grad_real", grad_real));
  FFV_CHECK(ffv::check_not_null(entry, "grad_perm", grad_perm));
  return ffv::with_dtype(entry, dtype, [&](auto tag) {
    return backward<decltype(tag)>(B, K, grad_loss, d_real, d_real_s0, d_real_s1, d_perm, d_perm_s0, d_perm_s1,
                                   grad_real, grad_perm);
  });
}

}  // extern "C"
