// log_qz on CUDA: beta-TCVAE's log q(z) and log q(z_d) estimates with an online logsumexp over
// the mixture components, never materialising (M, K, D) or (M, K) (kernels/include/fastfvae.h
// has the formulas; fastfvae/reference/log_qz.py derives the MSS weights).
//
// m[i,j,d] = c[j,d] - 0.5 (z[i,d] - mu[j,d])^2 iv[j,d],  c = -0.5 (log 2 pi + logvar), iv = exp(-logvar)
// w[i,j]   = own (j == i) | partner (j == (i+1) % K) | other
// forward  log_qz[i] = logsumexp_j (sum_d m + w);  log_qzj[i,d] = logsumexp_j (m + w)
// backward G = g[i] exp(sum_d m + w - log_qz[i]) + h[i,d] exp(m + w - log_qzj[i,d]), r = (z - mu) iv
//          grad_z = -sum_j G r;  grad_mu = sum_i G r;  grad_logvar = sum_i G (0.5 r (z - mu) - 0.5)
//
// Launches (no atomics, deterministic, no host synchronisation, no scratch allocations):
// - forward: one thread per query row; the block stages tiles of components (mu, iv, c) in
//   shared memory and every thread streams over them keeping running (max, sum) pairs for the
//   joint and for each d (per-thread arrays of kMaxD: D <= kMaxD on CUDA).
// - backward: one launch with a thread per query row for grad_z (query tiles of components in
//   shared memory), one with a thread per component for grad_mu / grad_logvar (tiles of queries,
//   their incoming gradients and saved logsumexps in shared memory). Both recompute m.
// Simple rather than tuned: Triton is the default on GPUs; this is the native CUDA fallback.
#include <math_constants.h>

#include <type_traits>

#include "common.cuh"

namespace ffv {
namespace gpu {
namespace {

constexpr int kMaxD = 256;           // latent sizes above this are rejected on CUDA

// Per-thread state (one value per latent dimension) lives in arrays of kDimCap >= D elements,
// kDimCap a compile-time bucket (8, 16, 32, 64, 256; with_dim_bucket below). When an array is
// at most kRegisterArrayBytes (32 floats, 16 doubles) every loop over d is unrolled, so each
// element is indexed by a constant and stays in a register; the `if (d < D)` guard turns the
// extra iterations into skipped predicates. Larger buckets are not unrolled (code size, spills:
// a float64 bucket of 32 spilled ~1.3 KiB) and keep their arrays in local memory, with a stack
// frame proportional to the bucket. Before this (one kMaxD = 256 bucket for every D) every
// thread had a 3-10 KiB local-memory frame whatever D was (REVIEW.md has the ptxas figures).
constexpr int kRegisterArrayBytes = 128;
#define FFV_FOR_DIM(d)                                                         \
  _Pragma("unroll kDimCap * sizeof(A) <= kRegisterArrayBytes ? kDimCap : 1") \
  for (int d = 0; d < kDimCap; ++d)                                           \
    if (d < D)
constexpr int kThreads = 64;         // threads (query rows or components) per block
constexpr int64_t kTileBytes = 24 * 1024;  // dynamic shared memory per block

__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }
template <typename A> __device__ __forceinline__ A neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return -CUDART_INF_F; }
template <> __device__ __forceinline__ double neg_inf<double>() { return -CUDART_INF; }

template <typename A>
struct LogWeights {
  A other, own, partner;
};

template <typename A>
__device__ __forceinline__ A log_weight(const LogWeights<A>& w, int64_t i, int64_t j, int64_t K) {
  if (j == i) return w.own;
  if (j == (i + 1) % K) return w.partner;
  return w.other;
}

// Online logsumexp: fold one term x into (running max, sum of exp(term - max)). NaN propagates.
template <typename A>
__device__ __forceinline__ void lse_add(A& max, A& sum, A x) {
  if (x > max) {
    sum = (max == neg_inf<A>() ? A(0) : sum * exp_acc(max - x)) + A(1);
    max = x;
  } else if (x != neg_inf<A>()) {
    sum += exp_acc(x - max);
  }
}

template <typename A>
__device__ __forceinline__ A lse_result(A max, A sum) {
  return max == neg_inf<A>() && sum == A(0) ? max : max + log_acc(sum);
}

// Stage components [j0, j0 + n) as [n][D] (mu, iv, c) in shared memory.
template <typename T>
__device__ __forceinline__ void stage_components(int64_t j0, int n, int64_t D, const T* mu, int64_t mu_s0,
                                                 int64_t mu_s1, const T* lv, int64_t lv_s0, int64_t lv_s1,
                                                 Acc<T>* s_mu, Acc<T>* s_iv, Acc<T>* s_c) {
  using A = Acc<T>;
  for (int64_t e = threadIdx.x; e < n * D; e += blockDim.x) {
    const int64_t t = e / D, d = e % D;
    const A logvar = load2(lv, j0 + t, d, lv_s0, lv_s1);
    s_mu[e] = load2(mu, j0 + t, d, mu_s0, mu_s1);
    s_iv[e] = exp_acc(-logvar);
    s_c[e] = A(-0.5) * (A(1.8378770664093453) + logvar);
  }
}

template <typename T, int kDimCap>
__global__ void __launch_bounds__(kThreads) log_qz_forward_kernel(
    int64_t M, int64_t K, int64_t D, int tile,
    const T* __restrict__ z, int64_t z_s0, int64_t z_s1,      // [M, D] strided: queries
    const T* __restrict__ mu, int64_t mu_s0, int64_t mu_s1,   // [K, D] strided: component means
    const T* __restrict__ lv, int64_t lv_s0, int64_t lv_s1,   // [K, D] strided: component log-variances
    LogWeights<Acc<T>> w,
    Acc<T>* __restrict__ log_qz,                              // [M] out, compute type
    Acc<T>* __restrict__ log_qzj) {                           // [M, D] out, compute type
  using A = Acc<T>;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  A* s_mu = reinterpret_cast<A*>(shared_bytes);
  A* s_iv = s_mu + tile * D;
  A* s_c = s_iv + tile * D;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = i < M;
  A zr[kDimCap], dim_max[kDimCap], dim_sum[kDimCap];  // registers for small buckets (FFV_FOR_DIM)
  FFV_FOR_DIM(d) {
    zr[d] = active ? load2(z, i, d, z_s0, z_s1) : A(0);
    dim_max[d] = neg_inf<A>();
    dim_sum[d] = A(0);
  }
  A joint_max = neg_inf<A>(), joint_sum = A(0);
  for (int64_t j0 = 0; j0 < K; j0 += tile) {
    const int n = static_cast<int>(K - j0 < tile ? K - j0 : tile);
    __syncthreads();  // the previous tile is no longer read
    stage_components(j0, n, D, mu, mu_s0, mu_s1, lv, lv_s0, lv_s1, s_mu, s_iv, s_c);
    __syncthreads();
    if (!active) continue;
    for (int t = 0; t < n; ++t) {
      const A wij = log_weight(w, i, j0 + t, K);
      A s = wij;
      FFV_FOR_DIM(d) {
        const A diff = zr[d] - s_mu[t * D + d];
        const A m = s_c[t * D + d] - A(0.5) * diff * diff * s_iv[t * D + d];
        s += m;
        lse_add(dim_max[d], dim_sum[d], m + wij);
      }
      lse_add(joint_max, joint_sum, s);
    }
  }
  if (!active) return;
  log_qz[i] = lse_result(joint_max, joint_sum);
  FFV_FOR_DIM(d) log_qzj[i * D + d] = lse_result(dim_max[d], dim_sum[d]);
}

template <typename T, int kDimCap>
__global__ void __launch_bounds__(kThreads) log_qz_backward_z_kernel(
    int64_t M, int64_t K, int64_t D, int tile,
    const Acc<T>* __restrict__ g, int64_t g_s0,                   // [M] compute type: dL/dlog_qz
    const Acc<T>* __restrict__ h, int64_t h_s0, int64_t h_s1,     // [M, D] compute type: dL/dlog_qzj
    const T* __restrict__ z, int64_t z_s0, int64_t z_s1,          // [M, D] strided
    const T* __restrict__ mu, int64_t mu_s0, int64_t mu_s1,       // [K, D] strided
    const T* __restrict__ lv, int64_t lv_s0, int64_t lv_s1,       // [K, D] strided
    const Acc<T>* __restrict__ lq, int64_t lq_s0,                 // [M] forward's log_qz
    const Acc<T>* __restrict__ lqj, int64_t lqj_s0, int64_t lqj_s1,  // [M, D] forward's log_qzj
    LogWeights<Acc<T>> w,
    T* __restrict__ grad_z) {                                     // [M, D] contiguous out
  using A = Acc<T>;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  A* s_mu = reinterpret_cast<A*>(shared_bytes);
  A* s_iv = s_mu + tile * D;
  A* s_c = s_iv + tile * D;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = i < M;
  A zr[kDimCap], hr[kDimCap], lqjr[kDimCap], gz[kDimCap];  // registers for small buckets (FFV_FOR_DIM)
  FFV_FOR_DIM(d) {
    zr[d] = active ? load2(z, i, d, z_s0, z_s1) : A(0);
    hr[d] = active ? h[i * h_s0 + d * h_s1] : A(0);
    lqjr[d] = active ? lqj[i * lqj_s0 + d * lqj_s1] : A(0);
    gz[d] = A(0);
  }
  const A gi = active ? g[i * g_s0] : A(0);
  const A lqi = active ? lq[i * lq_s0] : A(0);
  for (int64_t j0 = 0; j0 < K; j0 += tile) {
    const int n = static_cast<int>(K - j0 < tile ? K - j0 : tile);
    __syncthreads();
    stage_components(j0, n, D, mu, mu_s0, mu_s1, lv, lv_s0, lv_s1, s_mu, s_iv, s_c);
    __syncthreads();
    if (!active) continue;
    for (int t = 0; t < n; ++t) {
      const A wij = log_weight(w, i, j0 + t, K);
      A s = wij;
      FFV_FOR_DIM(d) {
        const A diff = zr[d] - s_mu[t * D + d];
        s += s_c[t * D + d] - A(0.5) * diff * diff * s_iv[t * D + d];
      }
      const A p_joint = gi * exp_acc(s - lqi);
      FFV_FOR_DIM(d) {
        const A diff = zr[d] - s_mu[t * D + d];
        const A r = diff * s_iv[t * D + d];
        const A m = s_c[t * D + d] - A(0.5) * diff * r;
        const A G = p_joint + hr[d] * exp_acc(m + wij - lqjr[d]);
        gz[d] -= G * r;
      }
    }
  }
  if (!active) return;
  FFV_FOR_DIM(d) grad_z[i * D + d] = from_acc<T>(gz[d]);
}

template <typename T, int kDimCap>
__global__ void __launch_bounds__(kThreads) log_qz_backward_components_kernel(
    int64_t M, int64_t K, int64_t D, int tile,
    const Acc<T>* __restrict__ g, int64_t g_s0,
    const Acc<T>* __restrict__ h, int64_t h_s0, int64_t h_s1,
    const T* __restrict__ z, int64_t z_s0, int64_t z_s1,
    const T* __restrict__ mu, int64_t mu_s0, int64_t mu_s1,
    const T* __restrict__ lv, int64_t lv_s0, int64_t lv_s1,
    const Acc<T>* __restrict__ lq, int64_t lq_s0,
    const Acc<T>* __restrict__ lqj, int64_t lqj_s0, int64_t lqj_s1,
    LogWeights<Acc<T>> w,
    T* __restrict__ grad_mu,       // [K, D] contiguous out
    T* __restrict__ grad_logvar) { // [K, D] contiguous out
  using A = Acc<T>;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  A* s_z = reinterpret_cast<A*>(shared_bytes);  // [tile][D] queries
  A* s_h = s_z + tile * D;                      // [tile][D] dL/dlog_qzj
  A* s_lqj = s_h + tile * D;                    // [tile][D] log_qzj
  A* s_g = s_lqj + tile * D;                    // [tile] dL/dlog_qz
  A* s_lq = s_g + tile;                         // [tile] log_qz
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = j < K;
  A muj[kDimCap], ivj[kDimCap], cj[kDimCap], gmu[kDimCap], glv[kDimCap];  // registers for small buckets (FFV_FOR_DIM)
  FFV_FOR_DIM(d) {
    const A logvar = active ? load2(lv, j, d, lv_s0, lv_s1) : A(0);
    muj[d] = active ? load2(mu, j, d, mu_s0, mu_s1) : A(0);
    ivj[d] = exp_acc(-logvar);
    cj[d] = A(-0.5) * (A(1.8378770664093453) + logvar);
    gmu[d] = A(0);
    glv[d] = A(0);
  }
  for (int64_t i0 = 0; i0 < M; i0 += tile) {
    const int n = static_cast<int>(M - i0 < tile ? M - i0 : tile);
    __syncthreads();
    for (int64_t e = threadIdx.x; e < n * D; e += blockDim.x) {
      const int64_t t = e / D, d = e % D;
      s_z[e] = load2(z, i0 + t, d, z_s0, z_s1);
      s_h[e] = h[(i0 + t) * h_s0 + d * h_s1];
      s_lqj[e] = lqj[(i0 + t) * lqj_s0 + d * lqj_s1];
    }
    for (int64_t t = threadIdx.x; t < n; t += blockDim.x) {
      s_g[t] = g[(i0 + t) * g_s0];
      s_lq[t] = lq[(i0 + t) * lq_s0];
    }
    __syncthreads();
    if (!active) continue;
    for (int t = 0; t < n; ++t) {
      const A wij = log_weight(w, i0 + t, j, K);
      A s = wij;
      FFV_FOR_DIM(d) {
        const A diff = s_z[t * D + d] - muj[d];
        s += cj[d] - A(0.5) * diff * diff * ivj[d];
      }
      const A p_joint = s_g[t] * exp_acc(s - s_lq[t]);
      FFV_FOR_DIM(d) {
        const A diff = s_z[t * D + d] - muj[d];
        const A r = diff * ivj[d];
        const A m = cj[d] - A(0.5) * diff * r;
        const A G = p_joint + s_h[t * D + d] * exp_acc(m + wij - s_lqj[t * D + d]);
        gmu[d] += G * r;
        glv[d] += G * (A(0.5) * r * diff - A(0.5));
      }
    }
  }
  if (!active) return;
  FFV_FOR_DIM(d) {
    grad_mu[j * D + d] = from_acc<T>(gmu[d]);
    grad_logvar[j * D + d] = from_acc<T>(glv[d]);
  }
}

// Rows of a shared-memory tile of `per_row` bytes each: as many as fit kTileBytes, 1 to 64.
inline int tile_rows(int64_t per_row) {
  const int64_t rows = kTileBytes / per_row;
  return static_cast<int>(rows < 1 ? 1 : (rows > 64 ? 64 : rows));
}

// Calls fn(std::integral_constant<int, cap>{}) with the smallest bucket cap >= D (D <= kMaxD).
template <typename Fn>
ffv_status with_dim_bucket(int64_t D, Fn&& fn) {
  if (D <= 8) return fn(std::integral_constant<int, 8>{});
  if (D <= 16) return fn(std::integral_constant<int, 16>{});
  if (D <= 32) return fn(std::integral_constant<int, 32>{});
  if (D <= 64) return fn(std::integral_constant<int, 64>{});
  return fn(std::integral_constant<int, kMaxD>{});
}

inline ffv_status check_sizes(const char* entry, int64_t M, int64_t K, int64_t D) {
  FFV_CHECK(check_positive(entry, "M", M));
  FFV_CHECK(check_positive(entry, "K", K));
  FFV_CHECK(check_positive(entry, "D", D));
  FFV_CHECK(check_numel(entry, M > K ? M : K, D));
  if (D > kMaxD)
    return fail(FFV_ERR_INVALID_ARGUMENT,
                std::string(entry) + ": D must be <= " + std::to_string(kMaxD) + " on CUDA, got " + std::to_string(D));
  return FFV_OK;
}

}  // namespace
}  // namespace gpu
}  // namespace ffv

using namespace ffv::gpu;

extern "C" {

FFV_API ffv_status ffv_log_qz_forward(
    ffv_dtype dtype, int64_t M, int64_t K, int64_t D,
    const void* z, int64_t z_s0, int64_t z_s1,
    const void* mu, int64_t mu_s0, int64_t mu_s1,
    const void* logvar, int64_t logvar_s0, int64_t logvar_s1,
    double log_w_other, double log_w_own, double log_w_partner,
    void* log_qz, void* log_qzj, void* stream) {
  const char* entry = "ffv_log_qz_forward";
  return guarded(entry, [&]() -> ffv_status {
    FFV_CHECK(check_sizes(entry, M, K, D));
    FFV_CHECK(check_not_null(entry, "z", z));
    FFV_CHECK(check_not_null(entry, "mu", mu));
    FFV_CHECK(check_not_null(entry, "logvar", logvar));
    FFV_CHECK(check_not_null(entry, "log_qz", log_qz));
    FFV_CHECK(check_not_null(entry, "log_qzj", log_qzj));
    const cudaStream_t s = as_stream(stream);
    return dispatch_dtype(entry, dtype, [&](auto type_tag) -> ffv_status {
      using T = decltype(type_tag);
      using A = Acc<T>;
      const int tile = tile_rows(3 * D * static_cast<int64_t>(sizeof(A)));
      const size_t shared = static_cast<size_t>(3 * tile * D) * sizeof(A);
      const LogWeights<A> w{static_cast<A>(log_w_other), static_cast<A>(log_w_own), static_cast<A>(log_w_partner)};
      const unsigned blocks = static_cast<unsigned>((M + kThreads - 1) / kThreads);
      return with_dim_bucket(D, [&](auto cap) -> ffv_status {
        log_qz_forward_kernel<T, decltype(cap)::value><<<blocks, kThreads, shared, s>>>(
            M, K, D, tile, static_cast<const T*>(z), z_s0, z_s1, static_cast<const T*>(mu), mu_s0, mu_s1,
            static_cast<const T*>(logvar), logvar_s0, logvar_s1, w, static_cast<A*>(log_qz),
            static_cast<A*>(log_qzj));
        return check_launch(entry);
      });
    });
  });
}

FFV_API ffv_status ffv_log_qz_backward(
    ffv_dtype dtype, int64_t M, int64_t K, int64_t D,
    const void* grad_log_qz, int64_t grad_log_qz_s0,
    const void* grad_log_qzj, int64_t grad_log_qzj_s0, int64_t grad_log_qzj_s1,
    const void* z, int64_t z_s0, int64_t z_s1,
    const void* mu, int64_t mu_s0, int64_t mu_s1,
    const void* logvar, int64_t logvar_s0, int64_t logvar_s1,
    const void* log_qz, int64_t log_qz_s0,
    const void* log_qzj, int64_t log_qzj_s0, int64_t log_qzj_s1,
    double log_w_other, double log_w_own, double log_w_partner,
    void* grad_z, void* grad_mu, void* grad_logvar, void* stream) {
  const char* entry = "ffv_log_qz_backward";
  return guarded(entry, [&]() -> ffv_status {
    FFV_CHECK(check_sizes(entry, M, K, D));
    FFV_CHECK(check_not_null(entry, "grad_log_qz", grad_log_qz));
    FFV_CHECK(check_not_null(entry, "grad_log_qzj", grad_log_qzj));
    FFV_CHECK(check_not_null(entry, "z", z));
    FFV_CHECK(check_not_null(entry, "mu", mu));
    FFV_CHECK(check_not_null(entry, "logvar", logvar));
    FFV_CHECK(check_not_null(entry, "log_qz", log_qz));
    FFV_CHECK(check_not_null(entry, "log_qzj", log_qzj));
    FFV_CHECK(check_not_null(entry, "grad_z", grad_z));
    FFV_CHECK(check_not_null(entry, "grad_mu", grad_mu));
    FFV_CHECK(check_not_null(entry, "grad_logvar", grad_logvar));
    const cudaStream_t s = as_stream(stream);
    return dispatch_dtype(entry, dtype, [&](auto type_tag) -> ffv_status {
      using T = decltype(type_tag);
      using A = Acc<T>;
      const LogWeights<A> w{static_cast<A>(log_w_other), static_cast<A>(log_w_own), static_cast<A>(log_w_partner)};
      const A* g = static_cast<const A*>(grad_log_qz);
      const A* h = static_cast<const A*>(grad_log_qzj);
      const A* lq = static_cast<const A*>(log_qz);
      const A* lqj = static_cast<const A*>(log_qzj);
      const T* zp = static_cast<const T*>(z);
      const T* mup = static_cast<const T*>(mu);
      const T* lvp = static_cast<const T*>(logvar);
      const int tile_k = tile_rows(3 * D * static_cast<int64_t>(sizeof(A)));
      const int tile_m = tile_rows((3 * D + 2) * static_cast<int64_t>(sizeof(A)));
      return with_dim_bucket(D, [&](auto cap) -> ffv_status {
      constexpr int kCap = decltype(cap)::value;
      log_qz_backward_z_kernel<T, kCap><<<static_cast<unsigned>((M + kThreads - 1) / kThreads), kThreads,
                                    static_cast<size_t>(3 * tile_k * D) * sizeof(A), s>>>(
          M, K, D, tile_k, g, grad_log_qz_s0, h, grad_log_qzj_s0, grad_log_qzj_s1, zp, z_s0, z_s1, mup, mu_s0,
          mu_s1, lvp, logvar_s0, logvar_s1, lq, log_qz_s0, lqj, log_qzj_s0, log_qzj_s1, w, static_cast<T*>(grad_z));
      FFV_CHECK(check_launch(entry));
      log_qz_backward_components_kernel<T, kCap><<<static_cast<unsigned>((K + kThreads - 1) / kThreads), kThreads,
                                             static_cast<size_t>((3 * D + 2) * tile_m) * sizeof(A), s>>>(
          M, K, D, tile_m, g, grad_log_qz_s0, h, grad_log_qzj_s0, grad_log_qzj_s1, zp, z_s0, z_s1, mup, mu_s0,
          mu_s1, lvp, logvar_s0, logvar_s1, lq, log_qz_s0, lqj, log_qzj_s0, log_qzj_s1, w,
          static_cast<T*>(grad_mu), static_cast<T*>(grad_logvar));
      return check_launch(entry);
      });
    });
  });
}

}  // extern "C"
