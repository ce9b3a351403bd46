// reparameterize_kl on CUDA: the reparameterised sample and the Gaussian KL to N(0, I).
//
// forward:  z[i,d] = mu[i,d] + exp(logvar[i,d] / 2) * eps[i,d]
//           eps = given, or philox_randn(seed, i*D + d) (float32, Triton's tl.randn stream)
//           kl_i = 0.5 * sum_d (mu^2 + exp(logvar) - logvar - 1)
//           kl = kl_i [B] (NONE) | mean_i kl_i [1] (MEAN) | sum_i kl_i [1] (SUM)
// backward: gkl_i = grad_kl[i] (NONE) | grad_kl[0] / B (MEAN) | grad_kl[0] (SUM)
//           grad_mu = gz + gkl_i * mu
//           grad_logvar = 0.5 * gz * exp(logvar / 2) * eps + 0.5 * gkl_i * (exp(logvar) - 1)
//           grad_eps = gz * exp(logvar / 2)
//           eps = the forward's given eps, or philox_randn(seed, i*D + d) regenerated from the
//           same seed (counter-based, as flash-attention replays dropout): nothing is stored.
//
// Launches (every sum in a fixed order, no float atomics: results are run-to-run identical).
// Forward NONE: one launch, one warp per row (8 rows per 256-thread block, grid-stride over
// rows) writing z and kl_i (a warp reduction). Forward MEAN/SUM with B*D <= 8192: one launch
// of a single 1024-thread block (32 warps over the rows, then a block sum). Larger MEAN/SUM:
// the NONE kernel writes kl_i to the caller's workspace (float64 [B]; ABI 3, fastfvae.h), then
// one 1024-thread block sums it for B <= 16384 rows; beyond, two stages (common.cuh
// reduce_plan): P blocks sum fixed row ranges into float64 partials [P] (in the workspace after
// the per-row KL), then one block sums them in order. Backward: one elementwise grid-stride
// launch.
#include "common.cuh"

namespace ffv {
namespace gpu {
namespace {

constexpr int kRowsPerBlock = kElementwiseThreads / 32;  // one warp per row
// MEAN/SUM inputs of at most this many elements run in one block (no workspace, one launch):
// the paper's B = 64, D = 10 is latency-bound, where a launch and an allocation dominate.
// 8192, as Triton's REDUCE_IN_KERNEL_MAX_ELEMENTS (it was 2^15: 32 one-warp rows of 10 leave
// 22 of 32 lanes idle, so one block is slow well before 2^15 elements).
constexpr int64_t kSingleBlockElements = 8192;

// Pointers of one forward call (all [B, D] inputs strided, z contiguous).
template <typename T>
struct ForwardArgs {
  int64_t B, D;
  const T* mu; int64_t mu_s0, mu_s1;              // [B, D] strided: means
  const T* logvar; int64_t logvar_s0, logvar_s1;  // [B, D] strided: log-variances
  const T* eps; int64_t eps_s0, eps_s1;           // [B, D] strided noise, or NULL: draw it
  const int64_t* seed;                            // [1] device int64: Philox key (read when eps == NULL)
  T* z;                                           // [B, D] contiguous out: the sample
};

// One warp handles row i: writes z[i, :] and returns kl_i = 0.5 * sum_d kl_term (valid in lane
// 0; fixed summation order). Every lane of the warp must call it.
template <typename T>
__device__ __forceinline__ Acc<T> reparameterize_row(const ForwardArgs<T>& a, uint64_t key, int64_t i, int lane) {
  using A = Acc<T>;
  A kl_partial = A(0);
  for (int64_t d = lane; d < a.D; d += 32) {
    const A m = load2(a.mu, i, d, a.mu_s0, a.mu_s1);
    const A lv = load2(a.logvar, i, d, a.logvar_s0, a.logvar_s1);
    const A e = a.eps != nullptr ? load2(a.eps, i, d, a.eps_s0, a.eps_s1)
                                 : static_cast<A>(philox_randn(key, static_cast<uint64_t>(i * a.D + d)));
    a.z[i * a.D + d] = from_acc<T>(cuda_math::reparameterize(m, lv, e));
    kl_partial += cuda_math::kl_term(m, lv);
  }
  return A(0.5) * warp_sum(kl_partial);
}

// Grid version: warps of all blocks stride over the rows; row i's KL goes to kl_rows[i]
// (NONE, rounded to T) or kl_workspace[i] (MEAN/SUM, float64, reduced by reduce_kl_kernel).
template <typename T>
__global__ void __launch_bounds__(kElementwiseThreads) reparameterize_kl_forward_kernel(
    ForwardArgs<T> a,
    T* __restrict__ kl_rows,               // [B] contiguous out (NONE) or NULL
    double* __restrict__ kl_workspace) {   // [B] per-row KL (MEAN/SUM) or NULL
  const int lane = threadIdx.x & 31;
  const int64_t first_row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  const int64_t row_step = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  const uint64_t key = a.eps == nullptr ? static_cast<uint64_t>(*a.seed) : 0;
  // The loop condition depends on the warp only, so whole warps enter warp_sum together.
  for (int64_t i = first_row; i < a.B; i += row_step) {
    const Acc<T> kl_i = reparameterize_row(a, key, i, lane);
    if (lane == 0) {
      if (kl_rows != nullptr) kl_rows[i] = from_acc<T>(kl_i);
      if (kl_workspace != nullptr) kl_workspace[i] = static_cast<double>(kl_i);
    }
  }
}

// Single-block version for small MEAN/SUM inputs: 32 warps stride over the rows, each warp
// adds its rows' KL in row order (float64), then a fixed-order block sum gives kl[0].
template <typename T>
__global__ void __launch_bounds__(kReduceThreads) reparameterize_kl_forward_single_block_kernel(
    ForwardArgs<T> a, int32_t reduction,
    T* __restrict__ kl) {  // [1] out: mean_i kl_i (MEAN) or sum_i kl_i (SUM)
  __shared__ double scratch[kReduceThreads / 32];
  const int lane = threadIdx.x & 31;
  const uint64_t key = a.eps == nullptr ? static_cast<uint64_t>(*a.seed) : 0;
  double warp_total = 0.0;  // meaningful in lane 0
  for (int64_t i = threadIdx.x >> 5; i < a.B; i += kReduceThreads / 32)
    warp_total += static_cast<double>(reparameterize_row(a, key, i, lane));
  const double total = block_sum(lane == 0 ? warp_total : 0.0, scratch);
  if (threadIdx.x == 0) {
    const double value = reduction == FFV_REDUCTION_MEAN ? total / static_cast<double>(a.B) : total;
    kl[0] = from_acc<T>(static_cast<Acc<T>>(value));
  }
}

// kl[0] = sum_i kl_workspace[i] (SUM) or that sum / B (MEAN). Block b sums rows
// [b * rows_per_block, min(B, (b + 1) * rows_per_block)); with one block (partials == NULL) it
// writes kl[0], else partials[b] (stage 1 of a two-stage reduction, reduce_kl_finish_kernel).
template <typename T>
__global__ void __launch_bounds__(kReduceThreads) reduce_kl_kernel(
    int64_t B, int32_t reduction, int64_t rows_per_block,
    const double* __restrict__ kl_workspace,  // [B] per-row KL in float64
    double* __restrict__ partials,            // [gridDim.x] float64 partial sums out, or NULL: one block
    T* __restrict__ kl) {                     // [1] out (single block): the reduced KL
  __shared__ double scratch[kReduceThreads / 32];
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  const int64_t end = B - begin < rows_per_block ? B : begin + rows_per_block;
  double partial = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kReduceThreads) partial += kl_workspace[i];
  const double total = block_sum(partial, scratch);
  if (threadIdx.x == 0) {
    if (partials != nullptr) {
      partials[blockIdx.x] = total;
    } else {
      const double value = reduction == FFV_REDUCTION_MEAN ? total / static_cast<double>(B) : total;
      kl[0] = from_acc<T>(static_cast<Acc<T>>(value));
    }
  }
}

// Stage 2: kl[0] = the P partials summed in order (SUM), / B (MEAN); one block.
template <typename T>
__global__ void __launch_bounds__(kReduceThreads) reduce_kl_finish_kernel(
    int64_t B, int32_t reduction, int64_t P,
    const double* __restrict__ partials,  // [P] float64: reduce_kl_kernel's partial sums
    T* __restrict__ kl) {                 // [1] out
  __shared__ double scratch[kReduceThreads / 32];
  const double total = sum_partials(partials, P, scratch);
  if (threadIdx.x == 0) {
    const double value = reduction == FFV_REDUCTION_MEAN ? total / static_cast<double>(B) : total;
    kl[0] = from_acc<T>(static_cast<Acc<T>>(value));
  }
}

// Workspace of the forward (fastfvae.h): 0 for NONE and the single-block MEAN/SUM; else the
// per-row KL, float64 [B], then (B > kRowsPerReduceBlock) the partials, float64 [P], at the
// next 256-byte boundary.
inline int64_t forward_workspace_bytes(int64_t B, int64_t D, int32_t reduction) {
  if (reduction == FFV_REDUCTION_NONE || B * D <= kSingleBlockElements) return 0;
  const ReducePlan plan = reduce_plan(B);
  const int64_t rows = align256(static_cast<int64_t>(sizeof(double)) * B);
  return plan.blocks == 1 ? rows : rows + static_cast<int64_t>(sizeof(double)) * plan.blocks;
}

template <typename T>
__global__ void __launch_bounds__(kElementwiseThreads) reparameterize_kl_backward_kernel(
    int64_t B, int64_t D, int32_t reduction,
    const T* __restrict__ grad_z, int64_t gz_s0, int64_t gz_s1,          // [B, D] strided: dL/dz
    const T* __restrict__ grad_kl, int64_t gkl_s0,                       // [B] strided (NONE) or [1]: dL/dkl
    const T* __restrict__ mu, int64_t mu_s0, int64_t mu_s1,              // [B, D] strided
    const T* __restrict__ logvar, int64_t logvar_s0, int64_t logvar_s1,  // [B, D] strided
    const T* __restrict__ eps, int64_t eps_s0, int64_t eps_s1,           // [B, D] strided given noise, or NULL
    const int64_t* __restrict__ seed,                                    // [1] device int64: Philox key (eps == NULL)
    T* __restrict__ grad_mu,                                             // [B, D] contiguous out
    T* __restrict__ grad_logvar,                                         // [B, D] contiguous out
    T* __restrict__ grad_eps) {                                          // [B, D] contiguous out, or NULL
  using A = Acc<T>;
  const int64_t n = B * D;
  const uint64_t key = eps == nullptr ? static_cast<uint64_t>(*seed) : 0;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / D, d = e - i * D;
    const A g = to_acc(reduction == FFV_REDUCTION_NONE ? grad_kl[i * gkl_s0] : grad_kl[0]);
    const A gkl = cuda_math::kl_row_grad(g, reduction, B);
    const A gz = load2(grad_z, i, d, gz_s0, gz_s1);
    const A m = load2(mu, i, d, mu_s0, mu_s1);
    const A lv = load2(logvar, i, d, logvar_s0, logvar_s1);
    // The forward's eps: e is the global element index i*D + d, its Philox counter.
    const A noise = eps != nullptr ? load2(eps, i, d, eps_s0, eps_s1)
                                   : static_cast<A>(philox_randn(key, static_cast<uint64_t>(e)));
    grad_mu[e] = from_acc<T>(cuda_math::reparameterize_kl_grad_mu(gz, gkl, m));
    grad_logvar[e] = from_acc<T>(cuda_math::reparameterize_kl_grad_logvar(gz, gkl, lv, noise));
    if (grad_eps != nullptr) grad_eps[e] = from_acc<T>(cuda_math::reparameterize_kl_grad_eps(gz, lv));
  }
}

}  // namespace
}  // namespace gpu
}  // namespace ffv

using namespace ffv::gpu;

extern "C" {

FFV_API ffv_status ffv_reparameterize_kl_forward(
    ffv_dtype dtype, int64_t B, int64_t D,
    const void* mu, int64_t mu_s0, int64_t mu_s1,
    const void* logvar, int64_t logvar_s0, int64_t logvar_s1,
    const void* eps, int64_t eps_s0, int64_t eps_s1,
    const int64_t* seed, int32_t reduction,
    void* z, void* kl, void* workspace, int64_t workspace_bytes, void* stream) {
  const char* entry = "ffv_reparameterize_kl_forward";
  return guarded(entry, [&]() -> ffv_status {
    FFV_CHECK(check_positive(entry, "B", B));
    FFV_CHECK(check_positive(entry, "D", D));
    FFV_CHECK(check_numel(entry, B, D));
    FFV_CHECK(check_not_null(entry, "mu", mu));
    FFV_CHECK(check_not_null(entry, "logvar", logvar));
    if (eps == nullptr) FFV_CHECK(check_not_null(entry, "seed (needed when eps is NULL)", seed));
    FFV_CHECK(check_reduction(entry, reduction));
    FFV_CHECK(check_not_null(entry, "z", z));
    FFV_CHECK(check_not_null(entry, "kl", kl));
    const cudaStream_t s = as_stream(stream);
    return dispatch_dtype(entry, dtype, [&](auto type_tag) -> ffv_status {
      using T = decltype(type_tag);
      const ForwardArgs<T> args{B, D, static_cast<const T*>(mu), mu_s0, mu_s1, static_cast<const T*>(logvar),
                                logvar_s0, logvar_s1, static_cast<const T*>(eps), eps_s0, eps_s1, seed,
                                static_cast<T*>(z)};
      if (reduction == FFV_REDUCTION_NONE) {
        reparameterize_kl_forward_kernel<T><<<grid_for(B, kRowsPerBlock), kElementwiseThreads, 0, s>>>(
            args, static_cast<T*>(kl), nullptr);
        return check_launch(entry);
      }
      if (B * D <= kSingleBlockElements) {
        reparameterize_kl_forward_single_block_kernel<T><<<1, kReduceThreads, 0, s>>>(args, reduction,
                                                                                       static_cast<T*>(kl));
        return check_launch(entry);
      }
      // MEAN/SUM, large: per-row KL into the caller's workspace, then a one- or two-stage sum.
      FFV_CHECK(check_workspace(entry, workspace, workspace_bytes, forward_workspace_bytes(B, D, reduction)));
      const ReducePlan plan = reduce_plan(B);
      const int64_t rows_bytes = align256(static_cast<int64_t>(sizeof(double)) * B);
      double* kl_rows = static_cast<double*>(workspace);  // [B] float64 per-row KL
      double* partials = plan.blocks == 1                 // [P] float64 partial sums (two stages)
                             ? nullptr
                             : reinterpret_cast<double*>(static_cast<char*>(workspace) + rows_bytes);
      reparameterize_kl_forward_kernel<T><<<grid_for(B, kRowsPerBlock), kElementwiseThreads, 0, s>>>(args, nullptr,
                                                                                                     kl_rows);
      FFV_CHECK(check_launch(entry));
      reduce_kl_kernel<T><<<static_cast<unsigned>(plan.blocks), kReduceThreads, 0, s>>>(
          B, reduction, plan.rows_per_block, kl_rows, partials, static_cast<T*>(kl));
      if (plan.blocks == 1) return check_launch(entry);
      FFV_CHECK(check_launch(entry));
      reduce_kl_finish_kernel<T><<<1, kReduceThreads, 0, s>>>(B, reduction, plan.blocks, partials,
                                                              static_cast<T*>(kl));
      return check_launch(entry);
    });
  });
}

FFV_API ffv_status ffv_reparameterize_kl_workspace_bytes(ffv_dtype dtype, int64_t B, int64_t D, int32_t reduction,
                                                         int64_t* bytes) {
  const char* entry = "ffv_reparameterize_kl_workspace_bytes";
  return guarded(entry, [&]() -> ffv_status {
    FFV_CHECK(check_positive(entry, "B", B));
    FFV_CHECK(check_positive(entry, "D", D));
    FFV_CHECK(check_numel(entry, B, D));
    FFV_CHECK(check_reduction(entry, reduction));
    FFV_CHECK(check_not_null(entry, "bytes", bytes));
    int64_t acc = 0;
    FFV_CHECK(acc_bytes(entry, dtype, &acc));  // the dtype check only: the workspace is float64
    *bytes = forward_workspace_bytes(B, D, reduction);
    return FFV_OK;
  });
}

FFV_API ffv_status ffv_reparameterize_kl_backward(
    ffv_dtype dtype, int64_t B, int64_t D,
    const void* grad_z, int64_t grad_z_s0, int64_t grad_z_s1,
    const void* grad_kl, int64_t grad_kl_s0,
    int32_t reduction,
    const void* mu, int64_t mu_s0, int64_t mu_s1,
    const void* logvar, int64_t logvar_s0, int64_t logvar_s1,
    const void* eps, int64_t eps_s0, int64_t eps_s1,
    const int64_t* seed,
    void* grad_mu, void* grad_logvar, void* grad_eps,
    void* stream) {
  const char* entry = "ffv_reparameterize_kl_backward";
  return guarded(entry, [&]() -> ffv_status {
    FFV_CHECK(check_positive(entry, "B", B));
    FFV_CHECK(check_positive(entry, "D", D));
    FFV_CHECK(check_numel(entry, B, D));
    FFV_CHECK(check_not_null(entry, "grad_z", grad_z));
    FFV_CHECK(check_not_null(entry, "grad_kl", grad_kl));
    FFV_CHECK(check_reduction(entry, reduction));
    FFV_CHECK(check_not_null(entry, "mu", mu));
    FFV_CHECK(check_not_null(entry, "logvar", logvar));
    if (eps == nullptr) FFV_CHECK(check_not_null(entry, "seed (needed when eps is NULL)", seed));
    FFV_CHECK(check_not_null(entry, "grad_mu", grad_mu));
    FFV_CHECK(check_not_null(entry, "grad_logvar", grad_logvar));
    const cudaStream_t s = as_stream(stream);
    return dispatch_dtype(entry, dtype, [&](auto type_tag) -> ffv_status {
      using T = decltype(type_tag);
      reparameterize_kl_backward_kernel<T><<<grid_for(B * D, kElementwiseThreads), kElementwiseThreads, 0, s>>>(
          B, D, reduction, static_cast<const T*>(grad_z), grad_z_s0, grad_z_s1, static_cast<const T*>(grad_kl),
          grad_kl_s0, static_cast<const T*>(mu), mu_s0, mu_s1, static_cast<const T*>(logvar), logvar_s0,
          logvar_s1, static_cast<const T*>(eps), eps_s0, eps_s1, seed, static_cast<T*>(grad_mu), static_cast<T*>(grad_logvar),
          static_cast<T*>(grad_eps));
      return check_launch(entry);
    });
  });
}

}  // extern "C"
