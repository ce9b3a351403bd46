// Argument checks shared by the CPU and the CUDA library (host code: no CUDA, no torch headers).
// Each returns FFV_OK, or records a message naming the entry and the argument through ffv::fail
// (status.h; each library defines it once, with its own thread-local ffv_last_error) and returns
// the failure code, so both libraries report the same messages and codes
// (tests/test_native.py and tests/test_cuda_host.py read them).
#pragma once
#include <stdint.h>

#include <string>

#include "fastfvae.h"
#include "status.h"

namespace ffv {

inline ffv_status check_not_null(const char* entry, const char* name, const void* pointer) {
  if (pointer != nullptr) return FFV_OK;
  return fail(FFV_ERR_INVALID_ARGUMENT, std::string(entry) + ": " + name + " must not be NULL");
}

inline ffv_status check_positive(const char* entry, const char* name, int64_t value) {
  if (value >= 1) return FFV_OK;
  return fail(FFV_ERR_INVALID_ARGUMENT,
              std::string(entry) + ": " + name + " must be >= 1, got " + std::to_string(value));
}

inline ffv_status check_logit_count(const char* entry, int64_t K) {
  if (K == 1 || K == 2) return FFV_OK;
  return fail(FFV_ERR_INVALID_ARGUMENT,
              std::string(entry) + ": K (logits per row) must be 1 or 2, got " + std::to_string(K));
}

inline ffv_status check_reduction(const char* entry, int32_t reduction) {
  if (reduction == FFV_REDUCTION_NONE || reduction == FFV_REDUCTION_MEAN || reduction == FFV_REDUCTION_SUM)
    return FFV_OK;
  return fail(FFV_ERR_INVALID_ARGUMENT, std::string(entry) + ": reduction code " + std::to_string(reduction) +
                                            " is not one of none=0, mean=1, sum=2");
}

// B <= INT32_MAX: permute_dims writes int32 row indices.
inline ffv_status check_int32_rows(const char* entry, int64_t B) {
  if (B <= INT32_MAX) return FFV_OK;
  return fail(FFV_ERR_INVALID_ARGUMENT, std::string(entry) + ": B must fit the int32 index, got " + std::to_string(B));
}

// a * b (* c) must fit in int64 (all >= 1): element counts and flat indices are int64. Both
// libraries call it in every entry, right after the size checks (tests/test_native.py,
// tests/test_cuda_host.py).
inline ffv_status check_numel(const char* entry, int64_t a, int64_t b, int64_t c = 1) {
  if (a <= INT64_MAX / b && a * b <= INT64_MAX / c) return FFV_OK;
  return fail(FFV_ERR_INVALID_ARGUMENT, std::string(entry) + ": the tensor has more than 2^63 - 1 elements");
}

}  // namespace ffv

// Evaluate a check; return its failure status from the calling function.
#define FFV_CHECK(expr)                                      \
  do {                                                       \
    const ffv_status ffv_check_status = (expr);              \
    if (ffv_check_status != FFV_OK) return ffv_check_status; \
  } while (0)
