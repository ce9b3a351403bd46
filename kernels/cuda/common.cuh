// Internal helpers of libfastfvae_cuda (not part of the ABI): error reporting, argument
// checks, element types, launch shapes and deterministic block reductions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <exception>
#include <string>

#include "arg_checks.h"
#include "fastfvae.h"
#include "formulas.h"
#include "status.h"

namespace ffv {
namespace gpu {

// ---- errors ------------------------------------------------------------------------------
// ffv::fail (status.h, defined in status.cu) records this thread's ffv_last_error(); the argument
// checks are the CPU library's (arg_checks.h). The entry points use `using namespace ffv::gpu`,
// so these declarations make them visible there too.
using ffv::check_int32_rows;
using ffv::check_logit_count;
using ffv::check_not_null;
using ffv::check_numel;
using ffv::check_positive;
using ffv::check_reduction;
using ffv::fail;

// After kernel launches: a launch error (or a sticky error of an earlier asynchronous
// failure) becomes FFV_ERR_CUDA with CUDA's message. Never synchronises.
inline ffv_status check_launch(const char* entry) {
  const cudaError_t error = cudaGetLastError();
  if (error == cudaSuccess) return FFV_OK;
  return fail(FFV_ERR_CUDA, std::string(entry) + ": CUDA error " + cudaGetErrorName(error) + ": " +
                                cudaGetErrorString(error));
}

// A CUDA runtime call's result (a CUB call) as a status. A failed call also
// sets the runtime's last error; it is cleared here (cudaGetLastError) so that the next
// check_launch, of any op, does not report this failure again as its own. (Sticky errors of a
// corrupted context are not cleared by this and keep being reported, as they must.)
inline ffv_status check_call(cudaError_t error, const char* entry, const char* what) {
  if (error == cudaSuccess) return FFV_OK;
  (void)cudaGetLastError();
  const ffv_status status = error == cudaErrorMemoryAllocation ? FFV_ERR_OUT_OF_MEMORY : FFV_ERR_CUDA;
  return fail(status, std::string(entry) + ": " + what + " failed: " + cudaGetErrorName(error) + ": " +
                          cudaGetErrorString(error));
}

// Run an entry's body so that no C++ exception (a failed host allocation while building a
// message) crosses the extern "C" boundary.
template <typename Body>
ffv_status guarded(const char* entry, Body&& body) {
  try {
    return body();
  } catch (const std::exception& error) {
    try {
      return fail(FFV_ERR_INTERNAL, std::string(entry) + ": " + error.what());
    } catch (...) {
      return FFV_ERR_INTERNAL;
    }
  }
}

// ---- element types --------------------------------------------------------------------------
// Acc<T>: the arithmetic type (float for float16 / bfloat16 / float32, double for float64).
template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using Acc = typename AccOf<T>::type;

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

// Round once to the storage type (round to nearest even, as PyTorch).
template <typename T> __device__ __forceinline__ T from_acc(Acc<T> x);
template <> __device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <> __device__ __forceinline__ double from_acc<double>(double x) { return x; }
template <> __device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Strided element [i, j] of a 2-D input with strides (s0, s1) in elements, as Acc.
template <typename T>
__device__ __forceinline__ Acc<T> load2(const T* base, int64_t i, int64_t j, int64_t s0, int64_t s1) {
  return to_acc(base[i * s0 + j * s1]);
}

// Calls launch(T{}) with the storage type of `dtype` (the value itself is unused: it only
// carries the type), or reports FFV_ERR_UNSUPPORTED_DTYPE.
template <typename Launch>
ffv_status dispatch_dtype(const char* entry, int32_t dtype, Launch&& launch) {
  switch (dtype) {
    case FFV_FLOAT32: return launch(float{});
    case FFV_FLOAT64: return launch(double{});
    case FFV_FLOAT16: return launch(__half{});
    case FFV_BFLOAT16: return launch(__nv_bfloat16{});
    default:
      return fail(FFV_ERR_UNSUPPORTED_DTYPE,
                  std::string(entry) + ": dtype code " + std::to_string(dtype) +
                      " is not one of float32=0, float64=1, float16=2, bfloat16=3");
  }
}

// ---- launch shapes ----------------------------------------------------------------------------
constexpr int kElementwiseThreads = 256;
constexpr int kReduceThreads = 1024;             // one-block reductions
constexpr int64_t kMaxGridBlocks = 65535 * 32;   // grid-stride loops cover anything beyond this

// Blocks for a grid-stride loop over n items, `per_block` items per block per pass.
inline unsigned grid_for(int64_t n, int64_t per_block) {
  const int64_t blocks = (n + per_block - 1) / per_block;
  return static_cast<unsigned>(blocks < kMaxGridBlocks ? blocks : kMaxGridBlocks);
}

inline cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

// ---- workspaces (ABI 3: allocated by the caller, fastfvae.h) -------------------------------------
// Byte count rounded up to a multiple of 256 (every workspace part starts 256-byte aligned, as
// CUB's temporary storage wants; torch's allocator returns 512-byte aligned blocks).
inline int64_t align256(int64_t bytes) { return (bytes + 255) & ~int64_t{255}; }

// The caller's workspace must hold `needed` bytes (NULL allowed when needed == 0).
inline ffv_status check_workspace(const char* entry, const void* workspace, int64_t workspace_bytes,
                                  int64_t needed) {
  if (needed == 0) return FFV_OK;
  if (workspace == nullptr || workspace_bytes < needed)
    return fail(FFV_ERR_INVALID_ARGUMENT,
                std::string(entry) + ": workspace of " + std::to_string(workspace_bytes) + " bytes" +
                    (workspace == nullptr ? " (NULL)" : "") + " given, " + std::to_string(needed) +
                    " needed (see the op's ffv_*_workspace_bytes)");
  return FFV_OK;
}

// ---- two-stage batch reductions (kernels/cuda/REVIEW.md, GPU readiness item 5) --------------
// A sum over `rows` runs in one block when rows <= kRowsPerReduceBlock (no workspace, one
// launch; the same order as before). Beyond: `blocks` blocks each sum a fixed range of
// rows_per_block consecutive rows (thread-strided, then block_sum) into a partial sum in the
// workspace, and one block sums the partials in index order. The split depends on `rows`
// only, so the result is bitwise run-to-run identical. Triton's _common.sum_into splits the
// same way (16384 rows per program).
constexpr int64_t kRowsPerReduceBlock = 16384;
constexpr int64_t kMaxReduceBlocks = 65536;  // more rows per block beyond 2^30 rows
struct ReducePlan {
  int64_t blocks;          // 1: single block, no partials
  int64_t rows_per_block;  // block b sums rows [b * rows_per_block, min(rows, (b + 1) * rows_per_block))
};
inline ReducePlan reduce_plan(int64_t rows) {
  if (rows <= kRowsPerReduceBlock) return {1, rows};
  int64_t per = kRowsPerReduceBlock;
  if ((rows + per - 1) / per > kMaxReduceBlocks) per = (rows + kMaxReduceBlocks - 1) / kMaxReduceBlocks;
  return {(rows + per - 1) / per, per};
}

// *bytes = sizeof the compute type of `dtype` (4, or 8 for float64), or FFV_ERR_UNSUPPORTED_DTYPE.
inline ffv_status acc_bytes(const char* entry, int32_t dtype, int64_t* bytes) {
  return dispatch_dtype(entry, dtype, [&](auto type_tag) -> ffv_status {
    *bytes = static_cast<int64_t>(sizeof(Acc<decltype(type_tag)>));
    return FFV_OK;
  });
}

// Workspace of a (B, K) logits loss whose forward reduces `sums` batch sums two-stage:
// sums * P partials of the compute type, or 0 bytes when one block serves (P = 1).
inline ffv_status logits_reduce_workspace_bytes(const char* entry, int32_t dtype, int64_t B, int64_t K,
                                                int64_t sums, int64_t* bytes) {
  FFV_CHECK(check_positive(entry, "B", B));
  FFV_CHECK(check_logit_count(entry, K));
  FFV_CHECK(check_not_null(entry, "bytes", bytes));
  int64_t acc = 0;
  FFV_CHECK(acc_bytes(entry, dtype, &acc));
  const ReducePlan plan = reduce_plan(B);
  *bytes = plan.blocks == 1 ? 0 : sums * acc * plan.blocks;
  return FFV_OK;
}

// ---- deterministic reductions ----------------------------------------------------------------
// Sum over the 32 lanes of a warp; the full sum lands in lane 0. Fixed order: run-to-run
// identical. Every lane of the warp must call it.
template <typename A>
__device__ __forceinline__ A warp_sum(A value) {
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_down_sync(0xffffffffu, value, offset);
  return value;
}

// Sum over a block of kReduceThreads threads; the result is valid in thread 0. Every thread
// must call it; `scratch` holds kReduceThreads / 32 values. Fixed order.
template <typename A>
__device__ __forceinline__ A block_sum(A value, A* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  value = warp_sum(value);
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  value = threadIdx.x < kReduceThreads / 32 ? scratch[threadIdx.x] : A(0);
  if (warp == 0) value = warp_sum(value);
  __syncthreads();  // scratch may be reused by the caller
  return value;
}

// Stage 2 of a two-stage reduction: sum of values[0 .. count) in a fixed order (thread t adds
// t, t + kReduceThreads, ..., then block_sum); valid in thread 0 of a kReduceThreads block.
template <typename A>
__device__ __forceinline__ A sum_partials(const A* __restrict__ values, int64_t count, A* scratch) {
  A partial = A(0);
  for (int64_t i = threadIdx.x; i < count; i += kReduceThreads) partial += values[i];
  return block_sum(partial, scratch);
}

}  // namespace gpu
}  // namespace ffv
