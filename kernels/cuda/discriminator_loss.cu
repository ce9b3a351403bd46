// discriminator_loss on CUDA: the discriminator's loss on logits of z ~ q(z) ("real") and of
// permute_dims(z') ("perm"), as fastfvae/reference/discriminator_loss.py:
//
// forward:  K = 2: loss = 0.5 * (mean_i CE(real_i, class 0) + mean_i CE(perm_i, class 1))
//           K = 1: loss = 0.5 * (mean_i BCE(real_i, 1) + mean_i BCE(perm_i, 0))
//                  (BCE with logits = (1 - y) * x - log_sigmoid(x) = softplus(-x) | softplus(x))
// backward: c = g * 0.5 / B (g = grad_loss[0])
//           K = 2: grad_real[i] = c * (softmax(real_i) - e0); grad_perm[i] = c * (softmax(perm_i) - e1)
//           K = 1: grad_real[i] = c * (sigmoid(real_i) - 1);  grad_perm[i] = c * sigmoid(perm_i)
// The per-element forms (kernels/cuda/formulas.h) follow PyTorch's, so Inf/NaN propagate as in
// the reference (e.g. a real logit of +Inf gives NaN for K = 1, as F.binary_cross_entropy_with_logits).
//
// Launches. Forward, B <= 16384: one block of 1024 threads over both tensors, two fixed-order
// block sums (run-to-run identical). Larger B: two stages (common.cuh reduce_plan): P blocks
// write partial sums [2, P] (compute type) into the caller's workspace, then one block sums
// each row of partials in order. Backward: one grid-stride launch, a thread per row writing the row's
// gradients in both outputs.
#include "common.cuh"

namespace ffv {
namespace gpu {
namespace {

// Loss of row i of a logit tensor whose target class is `label` (0: real, 1: perm).
// K = 2: CE(row, label); K = 1: BCE(x, y) with y = 1 for real, 0 for perm.
template <typename T>
__device__ __forceinline__ Acc<T> row_loss(const T* logits, int64_t i, int64_t K, int64_t s0, int64_t s1, int label) {
  const Acc<T> x0 = load2(logits, i, 0, s0, s1);
  if (K == 2) return cuda_math::cross_entropy2(x0, load2(logits, i, 1, s0, s1), label);
  return cuda_math::bce_with_logits(x0, label == 0 ? 1 : 0);
}

// Stage 1 (or the whole reduction when partials == NULL): block b sums the losses of rows
// [b * rows_per_block, min(B, (b + 1) * rows_per_block)) of both tensors.
template <typename T>
__global__ void __launch_bounds__(kReduceThreads) discriminator_loss_forward_kernel(
    int64_t B, int64_t K,
    const T* __restrict__ d_real, int64_t r_s0, int64_t r_s1,  // [B, K] strided: logits of z ~ q(z)
    const T* __restrict__ d_perm, int64_t p_s0, int64_t p_s1,  // [B, K] strided: logits of permuted z
    int64_t rows_per_block,
    Acc<T>* __restrict__ partials,  // [2, gridDim.x] workspace out (real, perm), or NULL: one block
    T* __restrict__ loss) {         // [1] out (single block)
  using A = Acc<T>;
  __shared__ A scratch[kReduceThreads / 32];
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  const int64_t end = B - begin < rows_per_block ? B : begin + rows_per_block;
  A real_partial = A(0), perm_partial = A(0);
  for (int64_t i = begin + threadIdx.x; i < end; i += kReduceThreads) {
    real_partial += row_loss(d_real, i, K, r_s0, r_s1, 0);
    perm_partial += row_loss(d_perm, i, K, p_s0, p_s1, 1);
  }
  const A real_sum = block_sum(real_partial, scratch);
  const A perm_sum = block_sum(perm_partial, scratch);
  if (threadIdx.x == 0) {
    if (partials != nullptr) {
      partials[blockIdx.x] = real_sum;
      partials[gridDim.x + blockIdx.x] = perm_sum;
    } else {
      const A b = static_cast<A>(B);
      loss[0] = from_acc<T>(A(0.5) * (real_sum / b + perm_sum / b));
    }
  }
}

// Stage 2: loss = 0.5 * (sum of real partials / B + sum of perm partials / B); one block.
template <typename T>
__global__ void __launch_bounds__(kReduceThreads) discriminator_loss_finish_kernel(
    int64_t B, int64_t P,
    const Acc<T>* __restrict__ partials,  // [2, P] workspace: stage 1's partial sums
    T* __restrict__ loss) {               // [1] out
  using A = Acc<T>;
  __shared__ A scratch[kReduceThreads / 32];
  const A real_sum = sum_partials(partials, P, scratch);
  const A perm_sum = sum_partials(partials + P, P, scratch);
  if (threadIdx.x == 0) {
    const A b = static_cast<A>(B);
    loss[0] = from_acc<T>(A(0.5) * (real_sum / b + perm_sum / b));
  }
}

template <typename T>
__global__ void __launch_bounds__(kElementwiseThreads) discriminator_loss_backward_kernel(
    int64_t B, int64_t K,
    const T* __restrict__ grad_loss,                           // [1]: dL/dloss
    const T* __restrict__ d_real, int64_t r_s0, int64_t r_s1,  // [B, K] strided
    const T* __restrict__ d_perm, int64_t p_s0, int64_t p_s1,  // [B, K] strided
    T* __restrict__ grad_real,                                 // [B, K] contiguous out
    T* __restrict__ grad_perm) {                               // [B, K] contiguous out
  using A = Acc<T>;
  const A c = to_acc(grad_loss[0]) * A(0.5) / static_cast<A>(B);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < B;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const A r0 = load2(d_real, i, 0, r_s0, r_s1), p0 = load2(d_perm, i, 0, p_s0, p_s1);
    if (K == 2) {
      const A r1 = load2(d_real, i, 1, r_s0, r_s1), p1 = load2(d_perm, i, 1, p_s0, p_s1);
      for (int k = 0; k < 2; ++k) {
        grad_real[2 * i + k] = from_acc<T>(c * cuda_math::cross_entropy2_grad(r0, r1, 0, k));
        grad_perm[2 * i + k] = from_acc<T>(c * cuda_math::cross_entropy2_grad(p0, p1, 1, k));
      }
    } else {
      grad_real[i] = from_acc<T>(c * cuda_math::bce_with_logits_grad(r0, 1));
      grad_perm[i] = from_acc<T>(c * cuda_math::bce_with_logits_grad(p0, 0));
    }
  }
}

}  // namespace
}  // namespace gpu
}  // namespace ffv

using namespace ffv::gpu;

extern "C" {

FFV_API ffv_status ffv_discriminator_loss_forward(
    ffv_dtype dtype, int64_t B, int64_t K,
    const void* d_real, int64_t d_real_s0, int64_t d_real_s1,
    const void* d_perm, int64_t d_perm_s0, int64_t d_perm_s1,
    void* loss, void* workspace, int64_t workspace_bytes, void* stream) {
  const char* entry = "ffv_discriminator_loss_forward";
  return guarded(entry, [&]() -> ffv_status {
    FFV_CHECK(check_positive(entry, "B", B));
    FFV_CHECK(check_logit_count(entry, K));
    FFV_CHECK(check_numel(entry, B, K));
    FFV_CHECK(check_not_null(entry, "d_real", d_real));
    FFV_CHECK(check_not_null(entry, "d_perm", d_perm));
    FFV_CHECK(check_not_null(entry, "loss", loss));
    const cudaStream_t s = as_stream(stream);
    return dispatch_dtype(entry, dtype, [&](auto type_tag) -> ffv_status {
      using T = decltype(type_tag);
      const ReducePlan plan = reduce_plan(B);
      const int64_t needed = plan.blocks == 1 ? 0 : 2 * static_cast<int64_t>(sizeof(Acc<T>)) * plan.blocks;
      FFV_CHECK(check_workspace(entry, workspace, workspace_bytes, needed));
      Acc<T>* partials = plan.blocks == 1 ? nullptr : static_cast<Acc<T>*>(workspace);  // [2, P]
      discriminator_loss_forward_kernel<T><<<static_cast<unsigned>(plan.blocks), kReduceThreads, 0, s>>>(
          B, K, static_cast<const T*>(d_real), d_real_s0, d_real_s1, static_cast<const T*>(d_perm), d_perm_s0,
          d_perm_s1, plan.rows_per_block, partials, static_cast<T*>(loss));
      if (plan.blocks == 1) return check_launch(entry);
      FFV_CHECK(check_launch(entry));
      discriminator_loss_finish_kernel<T><<<1, kReduceThreads, 0, s>>>(B, plan.blocks, partials,
                                                                       static_cast<T*>(loss));
      return check_launch(entry);
    });
  });
}

FFV_API ffv_status ffv_discriminator_loss_workspace_bytes(ffv_dtype dtype, int64_t B, int64_t K, int64_t* bytes) {
  const char* entry = "ffv_discriminator_loss_workspace_bytes";
  return guarded(entry, [&]() -> ffv_status { return logits_reduce_workspace_bytes(entry, dtype, B, K, 2, bytes); });
}

FFV_API ffv_status ffv_discriminator_loss_backward(
    ffv_dtype dtype, int64_t B, int64_t K,
    const void* grad_loss,
    const void* d_real, int64_t d_real_s0, int64_t d_real_s1,
    const void* d_perm, int64_t d_perm_s0, int64_t d_perm_s1,
    void* grad_real, void* grad_perm, void* stream) {
  const char* entry = "ffv_discriminator_loss_backward";
  return guarded(entry, [&]() -> ffv_status {
    FFV_CHECK(check_positive(entry, "B", B));
    FFV_CHECK(check_logit_count(entry, K));
    FFV_CHECK(check_numel(entry, B, K));
    FFV_CHECK(check_not_null(entry, "grad_loss", grad_loss));
    FFV_CHECK(check_not_null(entry, "d_real", d_real));
    FFV_CHECK(check_not_null(entry, "d_perm", d_perm));
    FFV_CHECK(check_not_null(entry, "grad_real", grad_real));
    FFV_CHECK(check_not_null(entry, "grad_perm", grad_perm));
    const cudaStream_t s = as_stream(stream);
    return dispatch_dtype(entry, dtype, [&](auto type_tag) -> ffv_status {
      using T = decltype(type_tag);
      discriminator_loss_backward_kernel<T><<<grid_for(B, kElementwiseThreads), kElementwiseThreads, 0, s>>>(
          B, K, static_cast<const T*>(grad_loss), static_cast<const T*>(d_real), d_real_s0, d_real_s1,
          static_cast<const T*>(d_perm), d_perm_s0, d_perm_s1, static_cast<T*>(grad_real),
          static_cast<T*>(grad_perm));
      return check_launch(entry);
    });
  });
}

}  // extern "C"
