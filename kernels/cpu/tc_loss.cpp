// tc_loss on the CPU: the VAE's total-correlation term from discriminator logits (DESIGN.md §1).
//
// forward  K = 2: tc = mean_i (l_i0 - l_i1)   (density-ratio trick, class 0 = "from q(z)")
//          K = 1: tc = mean_i l_i
// backward K = 2: grad[i,0] = g/B, grad[i,1] = -g/B;  K = 1: grad[i,0] = g/B.
#include <algorithm>
#include <type_traits>

#include "cpu_common.h"
#include "cpu_math.h"  // FFV_CLONES

namespace {

using ffv::Element;

constexpr int64_t kChunkRows = ffv::kRowSumChunkRows;  // chunked_row_sum's chunks: the same summation order

// Contiguous float (B, 2) logits: each chunk's differences in one vectorised float pass, then
// summed as chunked_row_sum sums the generic path's row values (bit for bit the same result).
FFV_CLONES double contiguous_pairs_sum(const float* logits, int64_t B, bool parallel) {
  return ffv::chunked_sum((B + kChunkRows - 1) / kChunkRows, parallel, [&](int64_t chunk) {
    float difference[kChunkRows];
    const int64_t begin = chunk * kChunkRows, rows = std::min(kChunkRows, B - begin);
    const float* pair = logits + 2 * begin;
    for (int64_t k = 0; k < rows; ++k) difference[k] = pair[2 * k] - pair[2 * k + 1];
    return ffv::range_sum(0, rows, [&](int64_t k) { return static_cast<double>(difference[k]); });
  });
}

template <typename T>
ffv_status forward(int64_t B, int64_t K, const void* logits_base, int64_t s0, int64_t s1, void* tc_out) {
  using E = Element<T>;
  using C = typename E::compute;
  const T* logits = static_cast<const T*>(logits_base);  // [B, K], element (i, k) at i*s0 + k*s1
  if constexpr (std::is_same_v<T, float>) {
    if (K == 2 && s0 == 2 && s1 == 1) {
      const double sum = contiguous_pairs_sum(logits, B, B * K >= ffv::kParallelCheap);
      E::store(static_cast<T*>(tc_out), static_cast<C>(sum / static_cast<double>(B)));  // [1]
      return FFV_OK;
    }
  }
  const double sum = ffv::chunked_row_sum(B, B * K >= ffv::kParallelCheap, [&](int64_t i) -> double {
    const C first = E::load(logits + i * s0);
    return static_cast<double>(K == 2 ? first - E::load(logits + i * s0 + s1) : first);
  });
  E::store(static_cast<T*>(tc_out), static_cast<C>(sum / static_cast<double>(B)));  // [1]
  return FFV_OK;
}

template <typename T>
ffv_status backward(int64_t B, int64_t K, const void* grad_tc, void* grad_out) {
  using E = Element<T>;
  using C = typename E::compute;
  const C value = E::load(static_cast<const T*>(grad_tc)) / static_cast<C>(B);  // g/B, grad_tc is [1]
  T* grad = static_cast<T*>(grad_out);                                           // [B, K] contiguous
  T positive, negative;
  E::store(&positive, value);
  E::store(&negative, -value);
  FFV_OMP(parallel for if(B * K >= ffv::kParallelCheap) schedule(static))
  for (int64_t i = 0; i < B; ++i) {
    grad[i * K] = positive;
    if (K == 2) grad[i * K + 1] = negative;
  }
  return FFV_OK;
}

}  // namespace

extern "C" {

FFV_API ffv_status ffv_tc_loss_forward(ffv_dtype dtype, int64_t B, int64_t K, const void* logits,
                                       int64_t logits_s0, int64_t logits_s1, void* tc, void* /*workspace*/,
                                       int64_t /*workspace_bytes*/, void* /*stream*/) {
  static const char* entry = "ffv_tc_loss_forward";
  FFV_CHECK(ffv::check_positive(entry, "B", B));
  FFV_CHECK(ffv::check_logit_count(entry, K));
  FFV_CHECK(ffv::check_numel(entry, B, K));
  FFV_CHECK(ffv::check_not_null(entry, "logits", logits));
  FFV_CHECK(ffv::check_not_null(entry, "tc", tc));
  return ffv::guarded(entry, [&] {
    return ffv::with_dtype(entry, dtype, [&](auto tag) {
      return forward<decltype(tag)>(B, K, logits, logits_s0, logits_s1, tc);
    });
  });
}

FFV_API ffv_status ffv_tc_loss_backward(ffv_dtype dtype, int64_t B, int64_t K, const void* grad_tc,
                                        void* grad_logits, void* /*stream*/) {
  static const char* entry = "ffv_tc_loss_backward";
  FFV_CHECK(ffv::check_positive(entry, "B", B));
  FFV_CHECK(ffv::check_logit_count(entry, K));
  FFV_CHECK(ffv::check_numel(entry, B, K));
  FFV_CHECK(ffv::check_not_null(entry, "grad_tc", grad_tc));
  FFV_CHECK(ffv::check_not_null(entry, "grad_logits", grad_logits));
  return ffv::guarded(entry, [&] {
    return ffv::with_dtype(entry, dtype, [&](auto tag) {
      return backward<decltype(tag)>(B, K, grad_tc, grad_logits);
    });
  });
}

// No workspace on the CPU: the query exists because both libraries export the same ABI
// (fastfvae.h); the forward ignores its workspace arguments.
FFV_API ffv_status ffv_tc_loss_workspace_bytes(ffv_dtype /*dtype*/, int64_t /*B*/, int64_t /*K*/, int64_t* bytes) {
  FFV_CHECK(ffv::check_not_null("ffv_tc_loss_workspace_bytes", "bytes", bytes));
  *bytes = 0;
  return FFV_OK;
}

}  // extern "C"
