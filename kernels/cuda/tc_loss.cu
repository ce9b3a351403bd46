// tc_loss on CUDA: the VAE's total-correlation term from discriminator logits on z ~ q(z).
//
// forward:  K = 2: tc = mean_i (l[i,0] - l[i,1])  (density-ratio trick, log D / (1 - D))
//           K = 1: tc = mean_i l[i,0]
// backward: K = 2: grad[i,0] = g / B, grad[i,1] = -g / B;  K = 1: grad[i,0] = g / B  (g = grad_tc[0])
//
// Launches. Forward, B <= 16384: one block of 1024 threads, each summing rows i = t, t + 1024,
// ... in order, then a fixed-order block reduction (run-to-run identical, no atomics). Larger
// B: two stages (common.cuh reduce_plan): P blocks each sum a fixed range of rows into a
// partial sum in the caller's workspace (compute type [P]), then one block sums the partials
// in order. Backward: one elementwise grid-stride launch; grad_tc is read on the device (no
// host synchronisation).
#include "common.cuh"

namespace ffv {
namespace gpu {
namespace {

// Stage 1 (or the whole reduction when partials == NULL): block b sums rows
// [b * rows_per_block, min(B, (b + 1) * rows_per_block)).
template <typename T>
__global__ void __launch_bounds__(kReduceThreads) tc_loss_forward_kernel(
    int64_t B, int64_t K,
    const T* __restrict__ logits, int64_t s0, int64_t s1,  // [B, K] strided: discriminator logits
    int64_t rows_per_block,
    Acc<T>* __restrict__ partials,                         // [gridDim.x] workspace out, or NULL: one block
    T* __restrict__ tc) {                                  // [1] out (single block): the TC estimate
  using A = Acc<T>;
  __shared__ A scratch[kReduceThreads / 32];
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  const int64_t end = B - begin < rows_per_block ? B : begin + rows_per_block;
  A partial = A(0);
  for (int64_t i = begin + threadIdx.x; i < end; i += kReduceThreads) {
    const A l0 = load2(logits, i, 0, s0, s1);
    partial += K == 2 ? l0 - load2(logits, i, 1, s0, s1) : l0;
  }
  const A total = block_sum(partial, scratch);
  if (threadIdx.x == 0) {
    if (partials != nullptr) partials[blockIdx.x] = total;
    else tc[0] = from_acc<T>(total / static_cast<A>(B));
  }
}

// Stage 2: tc = (sum of the P partials, in order) / B; one block.
template <typename T>
__global__ void __launch_bounds__(kReduceThreads) tc_loss_finish_kernel(
    int64_t B, int64_t P,
    const Acc<T>* __restrict__ partials,  // [P] workspace: stage 1's partial sums
    T* __restrict__ tc) {                 // [1] out
  using A = Acc<T>;
  __shared__ A scratch[kReduceThreads / 32];
  const A total = sum_partials(partials, P, scratch);
  if (threadIdx.x == 0) tc[0] = from_acc<T>(total / static_cast<A>(B));
}

template <typename T>
__global__ void __launch_bounds__(kElementwiseThreads) tc_loss_backward_kernel(
    int64_t B, int64_t K,
    const T* __restrict__ grad_tc,  // [1]: dL/dtc
    T* __restrict__ grad_logits) {  // [B, K] contiguous out
  using A = Acc<T>;
  const A step = to_acc(grad_tc[0]) / static_cast<A>(B);
  const T plus = from_acc<T>(step), minus = from_acc<T>(-step);
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < B * K;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    grad_logits[e] = (K == 2 && (e & 1)) ? minus : plus;  // column 1 of a 2-logit row: -g/B
}

}  // namespace
}  // namespace gpu
}  // namespace ffv

using namespace ffv::gpu;

extern "C" {

FFV_API ffv_status ffv_tc_loss_forward(
    ffv_dtype dtype, int64_t B, int64_t K,
    const void* logits, int64_t logits_s0, int64_t logits_s1,
    void* tc, void* workspace, int64_t workspace_bytes, void* stream) {
  const char* entry = "ffv_tc_loss_forward";
  return guarded(entry, [&]() -> ffv_status {
    FFV_CHECK(check_positive(entry, "B", B));
    FFV_CHECK(check_logit_count(entry, K));
    FFV_CHECK(check_numel(entry, B, K));
    FFV_CHECK(check_not_null(entry, "logits", logits));
    FFV_CHECK(check_not_null(entry, "tc", tc));
    const cudaStream_t s = as_stream(stream);
    return dispatch_dtype(entry, dtype, [&](auto type_tag) -> ffv_status {
      using T = decltype(type_tag);
      const ReducePlan plan = reduce_plan(B);
      const int64_t needed = plan.blocks == 1 ? 0 : static_cast<int64_t>(sizeof(Acc<T>)) * plan.blocks;
      FFV_CHECK(check_workspace(entry, workspace, workspace_bytes, needed));
      Acc<T>* partials = plan.blocks == 1 ? nullptr : static_cast<Acc<T>*>(workspace);  // [P]
      tc_loss_forward_kernel<T><<<static_cast<unsigned>(plan.blocks), kReduceThreads, 0, s>>>(
          B, K, static_cast<const T*>(logits), logits_s0, logits_s1, plan.rows_per_block, partials,
          static_cast<T*>(tc));
      if (plan.blocks == 1) return check_launch(entry);
      FFV_CHECK(check_launch(entry));
      tc_loss_finish_kernel<T><<<1, kReduceThreads, 0, s>>>(B, plan.blocks, partials, static_cast<T*>(tc));
      return check_launch(entry);
    });
  });
}

FFV_API ffv_status ffv_tc_loss_workspace_bytes(ffv_dtype dtype, int64_t B, int64_t K, int64_t* bytes) {
  const char* entry = "ffv_tc_loss_workspace_bytes";
  return guarded(entry, [&]() -> ffv_status { return logits_reduce_workspace_bytes(entry, dtype, B, K, 1, bytes); });
}

FFV_API ffv_status ffv_tc_loss_backward(
    ffv_dtype dtype, int64_t B, int64_t K,
    const void* grad_tc,
    void* grad_logits, void* stream) {
  const char* entry = "ffv_tc_loss_backward";
  return guarded(entry, [&]() -> ffv_status {
    FFV_CHECK(check_positive(entry, "B", B));
    FFV_CHECK(check_logit_count(entry, K));
    FFV_CHECK(check_numel(entry, B, K));
    FFV_CHECK(check_not_null(entry, "grad_tc", grad_tc));
    FFV_CHECK(check_not_null(entry, "grad_logits", grad_logits));
    const cudaStream_t s = as_stream(stream);
    return dispatch_dtype(entry, dtype, [&](auto type_tag) -> ffv_status {
      using T = decltype(type_tag);
      tc_loss_backward_kernel<T><<<grid_for(B * K, kElementwiseThreads), kElementwiseThreads, 0, s>>>(
          B, K, static_cast<const T*>(grad_tc), static_cast<T*>(grad_logits));
      return check_launch(entry);
    });
  });
}

}  // extern "C"
