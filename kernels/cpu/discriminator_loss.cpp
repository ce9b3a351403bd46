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
// K = 2 in float32 compute (float32, float16, bfloat16 tensors) runs in blocks of 1024 rows through
// loops that vectorise (cpu_math.h's exp/log): ~10x faster than libm's scalar calls at B = 16384.
#include <cmath>
#include <type_traits>

#include "cpu_common.h"
#include "cpu_math.h"

namespace {

using ffv::Element;
using ffv::cpu_math::exp_f32;
using ffv::cpu_math::log_f32_positive;

constexpr int64_t kBlockRows = ffv::kRowSumChunkRows;  // rows per vectorised block (and per deterministic chunk)

// log of softmax's denominator exp(a - m) + exp(b - m): in [1, 2], or NaN, which stays NaN
// (sum - sum is 0, or NaN for NaN; a select here would stop GCC vectorising the loop).
FFV_INLINE float log_denominator_f32(float sum) { return log_f32_positive(sum) + (sum - sum); }

// loss[k] = cross_entropy2(a[k], b[k], target) in float32, k < n (the same formula, vectorised).
FFV_CLONES void cross_entropy2_f32(const float* a, const float* b, int64_t n, int target, float* loss) {
  const float* picked = target == 0 ? a : b;
  for (int64_t k = 0; k < n; ++k) {
    const float m = a[k] > b[k] ? a[k] : b[k];
    loss[k] = (m - picked[k]) + log_denominator_f32(exp_f32(a[k] - m) + exp_f32(b[k] - m));
  }
}

// p_a[k], p_b[k] = softmax2(a[k], b[k]) in float32, k < n (the same formula, vectorised).
FFV_CLONES void softmax2_f32(const float* a, const float* b, int64_t n, float* p_a, float* p_b) {
  for (int64_t k = 0; k < n; ++k) {
    const float m = a[k] > b[k] ? a[k] : b[k];
    const float e_a = exp_f32(a[k] - m), e_b = exp_f32(b[k] - m);
    const float total = e_a + e_b;
    p_a[k] = e_a / total;
    p_b[k] = e_b / total;
  }
}

// GCC cannot see that load_pairs fills the block buffers before the vectorised loops (which take
// them as const pointers) read them, and warns; every element read was written.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// Rows [begin, end) of a strided (B, 2) logits tensor into two float columns.
template <typename T>
void load_pairs(const T* logits, int64_t s0, int64_t s1, int64_t begin, int64_t end, float* a, float* b) {
  for (int64_t i = begin; i < end; ++i) {
    a[i - begin] = Element<T>::load(logits + i * s0);
    b[i - begin] = Element<T>::load(logits + i * s0 + s1);
  }
}

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
  const bool parallel = B * K >= ffv::kParallelExpensive;
  if constexpr (std::is_same_v<C, float>) {
    if (K == 2) {  // blocks of kBlockRows rows: the chunks (and summation order) of chunked_row_sum
      const double sum = ffv::chunked_sum((B + kBlockRows - 1) / kBlockRows, parallel, [&](int64_t block) {
        float a[kBlockRows], b[kBlockRows], real_loss[kBlockRows], perm_loss[kBlockRows];
        const int64_t begin = block * kBlockRows, end = begin + kBlockRows < B ? begin + kBlockRows : B;
        load_pairs(real, r0, r1, begin, end, a, b);
        cross_entropy2_f32(a, b, end - begin, 0, real_loss);
        load_pairs(perm, p0, p1, begin, end, a, b);
        cross_entropy2_f32(a, b, end - begin, 1, perm_loss);
        return ffv::range_sum(0, end - begin, [&](int64_t k) {
          return static_cast<double>(real_loss[k]) + static_cast<double>(perm_loss[k]);
        });
      });
      E::store(static_cast<T*>(loss_out), static_cast<C>(0.5 * sum / static_cast<double>(B)));  // [1]
      return FFV_OK;
    }
  }
  const double sum = ffv::chunked_row_sum(B, parallel, [&](int64_t i) -> double {
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
  if constexpr (std::is_same_v<C, float>) {
    if (K == 2) {
      const int64_t blocks = (B + kBlockRows - 1) / kBlockRows;
      FFV_OMP(parallel for if(B * K >= ffv::kParallelExpensive) schedule(static))
      for (int64_t block = 0; block < blocks; ++block) {
        float a[kBlockRows], b[kBlockRows], q0[kBlockRows], q1[kBlockRows];
        const int64_t begin = block * kBlockRows, end = begin + kBlockRows < B ? begin + kBlockRows : B;
        load_pairs(real, r0, r1, begin, end, a, b);
        softmax2_f32(a, b, end - begin, q0, q1);
        for (int64_t i = begin; i < end; ++i) {
          E::store(grad_real + 2 * i, (q0[i - begin] - C(1)) * scale);
          E::store(grad_real + 2 * i + 1, q1[i - begin] * scale);
        }
        load_pairs(perm, p0, p1, begin, end, a, b);
        softmax2_f32(a, b, end - begin, q0, q1);
        for (int64_t i = begin; i < end; ++i) {
          E::store(grad_perm + 2 * i, q0[i - begin] * scale);
          E::store(grad_perm + 2 * i + 1, (q1[i - begin] - C(1)) * scale);
        }
      }
      return FFV_OK;
    }
  }
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

#pragma GCC diagnostic pop  // the -Wmaybe-uninitialized exception ends with the kernels

}  // namespace

extern "C" {

FFV_API ffv_status ffv_discriminator_loss_forward(ffv_dtype dtype, int64_t B, int64_t K, const void* d_real,
                                                  int64_t d_real_s0, int64_t d_real_s1, const void* d_perm,
                                                  int64_t d_perm_s0, int64_t d_perm_s1, void* loss,
                                                  void* /*workspace*/, int64_t /*workspace_bytes*/,
                                                  void* /*stream*/) {
  static const char* entry = "ffv_discriminator_loss_forward";
  FFV_CHECK(ffv::check_positive(entry, "B", B));
  FFV_CHECK(ffv::check_logit_count(entry, K));
  FFV_CHECK(ffv::check_numel(entry, B, K));
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
  FFV_CHECK(ffv::check_numel(entry, B, K));
  FFV_CHECK(ffv::check_not_null(entry, "grad_loss", grad_loss));
  FFV_CHECK(ffv::check_not_null(entry, "d_real", d_real));
  FFV_CHECK(ffv::check_not_null(entry, "d_perm", d_perm));
  FFV_CHECK(ffv::check_not_null(entry, "grad_real", grad_real));
  FFV_CHECK(ffv::check_not_null(entry, "grad_perm", grad_perm));
  return ffv::guarded(entry, [&] {  // no exception may cross the C boundary (every entry is guarded)
    return ffv::with_dtype(entry, dtype, [&](auto tag) {
      return backward<decltype(tag)>(B, K, grad_loss, d_real, d_real_s0, d_real_s1, d_perm, d_perm_s0, d_perm_s1,
                                     grad_real, grad_perm);
    });
  });
}

// No workspace on the CPU: the query exists because both libraries export the same ABI
// (fastfvae.h); the forward ignores its workspace arguments.
FFV_API ffv_status ffv_discriminator_loss_workspace_bytes(ffv_dtype /*dtype*/, int64_t /*B*/, int64_t /*K*/, int64_t* bytes) {
  FFV_CHECK(ffv::check_not_null("ffv_discriminator_loss_workspace_bytes", "bytes", bytes));
  *bytes = 0;
  return FFV_OK;
}

}  // extern "C"
