// DIP-VAE's covariance penalty on the CPU, forward (host helper of fastfvae/dip_penalty.py,
// DESIGN.md §9; not an op: CPU library only, the backward stays in torch ops there).
//
// For mu, logvar [B, D] (logvar optional: variant "i" has none):
//   s = mu[0, :]                        the shift: a code of the same batch
//   y_i = mu_i - s                      (rounded in the input dtype, as torch's mu - s)
//   Gram = sum_i y_i y_i^T,  o = sum_i y_i / B
//   Cov = Gram / B - o o^T,  mean = s + o
//   v_d = sum_i exp(logvar[i, d]) / B  (0 without logvar)
//   A = Cov + diag(v) - I
//   penalty = lambda_od * sum_{j != k} A_jk^2 + lambda_d * sum_j A_jj^2
// and, when asked, variance[i, d] = exp(logvar[i, d]) (the backward's dP/dlogvar reuses it).
//
// One pass over mu and logvar. Rows go in chunks of kChunkRows into a small buffer of y (the
// shift subtracted once per element, columns padded with zeros to whole tiles); the Gram
// matrix's upper triangle is accumulated from that buffer by register tiles of 8 rows x one
// 32-byte vector (each row: 1 vector load, 8 broadcasts, 8 FMAs; 8 accumulators, which fit
// AVX2's 16 registers: with 64-byte vectors and two a tile the AVX2 clone spilled them and ran
// ~20x slower), in the input dtype over one chunk, then added to double sums. Each Gram entry
// sums the rows in the same order whatever the vector width, so the clones with FMA (x86-64-v3
// and -v4) give the same bits; the baseline x86-64 clone rounds each product before adding it
// (no FMA), which can change the last bit.
// Sums run per slab of rows and the slabs' partials are added in slab order, so the result does
// not depend on the number of threads either. The torch form this replaces wrote mu - s out
// chunk by chunk and multiplied it by torch.mm: one more pass over mu, and a GEMM that computes
// both triangles.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "cpu_common.h"
#include "cpu_math.h"

namespace {

constexpr int64_t kChunkRows = 128;       // rows of y in the buffer: 32 KB of float32 at D = 64 (L1)
constexpr int64_t kMinSlabRows = 1024;    // rows a slab sums before its partial is kept
constexpr int64_t kMaxSlabs = 64;         // partials kept at most (slabs grow beyond 64 x 1024 rows)
constexpr int64_t kPartialBytes = int64_t{32} << 20;  // ... and at most 32 MB of them (wide codes)
constexpr int kTileColumns = 8;           // Gram rows j a tile broadcasts (its accumulators: 8 vectors)

// 32-byte vectors: 8 float32 or 4 float64 (one AVX2 register; the same speed as 64-byte ones on
// Zen 4, whose AVX-512 runs in 256-bit halves).
typedef float Vec8f __attribute__((vector_size(32)));
typedef double Vec4d __attribute__((vector_size(32)));
template <typename T>
struct VecOf;
template <>
struct VecOf<float> { using type = Vec8f; };
template <>
struct VecOf<double> { using type = Vec4d; };
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int64_t kLanes = 32 / static_cast<int64_t>(sizeof(T));
// Buffer rows are padded to a multiple of this: whole vectors and whole tiles of Gram rows.
template <typename T>
constexpr int64_t kRowMultiple = kLanes<T> > kTileColumns ? kLanes<T> : kTileColumns;

// Per-slab sums, ld = the buffer rows' length (a multiple of kRowMultiple): Gram's upper
// triangle [ld, ld] (row j, columns k >= j; entries below the diagonal inside a tile are
// computed too and ignored), the sum of y [ld] and the sum of exp(logvar) [ld].
struct SlabSums {
  std::vector<double> gram, y, variance;
};

// gram[j0 + jj, k0 + lane] += sum over the chunk's rows r of y[r, j0 + jj] * y[r, k0 + lane]
// for jj < 8 and the L lanes of one vector: the accumulators stay in registers for the chunk.
template <typename T>
FFV_INLINE void gram_tile(const T* y, int64_t rows, int64_t ld, int64_t j0, int64_t k0, double* gram) {
  using V = Vec<T>;
  constexpr int64_t L = kLanes<T>;
  V acc[kTileColumns] = {};
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = y + r * ld;
    V b;
    std::memcpy(&b, row + k0, sizeof(V));
    for (int jj = 0; jj < kTileColumns; ++jj) {
      // Broadcast y[r, j0 + jj] as s - 0, which GCC folds into a broadcast load (s + 0 it may
      // not fold, as -0 + 0 is +0: it loaded the scalar and broadcast it from a register).
      const V a = row[j0 + jj] - V{};
      acc[jj] += a * b;
    }
  }
  for (int jj = 0; jj < kTileColumns; ++jj) {
    double* out = gram + (j0 + jj) * ld + k0;
    for (int64_t l = 0; l < L; ++l) out[l] += static_cast<double>(acc[jj][l]);
  }
}

// Sums of rows [i0, i1) of mu (and logvar) into `sums`.
// scratch: [(kChunkRows + 3) * ld] of T: the buffer of y, the chunk's sums of y and of exp(logvar),
// and a row of exp(logvar) when the output does not take them.
template <typename T>
FFV_CLONES void sum_slab(int64_t i0, int64_t i1, int64_t D, int64_t ld, const T* mu, int64_t mu_s0, int64_t mu_s1,
                         const T* logvar, int64_t lv_s0, int64_t lv_s1, T* variance_out, T* scratch,
                         SlabSums& sums) {
  constexpr int64_t L = kLanes<T>;
  T* const y_buffer = scratch;
  T* const y_chunk_sum = scratch + kChunkRows * ld;
  T* const v_chunk_sum = y_chunk_sum + ld;
  T* const v_scratch = v_chunk_sum + ld;
  for (int64_t c0 = i0; c0 < i1; c0 += kChunkRows) {
    const int64_t rows = std::min(kChunkRows, i1 - c0);
    std::fill(y_chunk_sum, y_chunk_sum + ld, T(0));
    for (int64_t r = 0; r < rows; ++r) {
      T* y = y_buffer + r * ld;
      const T* mu_row = mu + (c0 + r) * mu_s0;
      if (mu_s1 == 1) {
        for (int64_t d = 0; d < D; ++d) y[d] = mu_row[d] - mu[d];
      } else {
        for (int64_t d = 0; d < D; ++d) y[d] = mu_row[d * mu_s1] - mu[d * mu_s1];
      }
      for (int64_t d = D; d < ld; ++d) y[d] = T(0);
      for (int64_t d = 0; d < ld; ++d) y_chunk_sum[d] += y[d];
    }
    for (int64_t d = 0; d < ld; ++d) sums.y[d] += static_cast<double>(y_chunk_sum[d]);
    if (logvar != nullptr) {
      std::fill(v_chunk_sum, v_chunk_sum + ld, T(0));
      for (int64_t r = 0; r < rows; ++r) {
        // exp(logvar) of the row into v_row: the output's row, or the chunk sums' scratch row
        T* v_row = variance_out != nullptr ? variance_out + (c0 + r) * D : v_scratch;
        const T* lv_row = logvar + (c0 + r) * lv_s0;
        if (lv_s1 == 1) {
          for (int64_t d = 0; d < D; ++d) v_row[d] = ffv::cpu_math::exp_c(lv_row[d]);
        } else {
          for (int64_t d = 0; d < D; ++d) v_row[d] = ffv::cpu_math::exp_c(lv_row[d * lv_s1]);
        }
        for (int64_t d = 0; d < D; ++d) v_chunk_sum[d] += v_row[d];
      }
      for (int64_t d = 0; d < D; ++d) sums.variance[d] += static_cast<double>(v_chunk_sum[d]);
    }
    // Tiles (j0, k0) that hold some k >= j: rows j of [j0, j0 + 8), columns of [k0, k0 + L).
    for (int64_t j0 = 0; j0 < D; j0 += kTileColumns) {
      for (int64_t k0 = j0 / L * L; k0 < ld; k0 += L) gram_tile<T>(y_buffer, rows, ld, j0, k0, sums.gram.data());
    }
  }
}

template <typename T>
void forward(int64_t B, int64_t D, const T* mu, int64_t mu_s0, int64_t mu_s1, const T* logvar, int64_t lv_s0,
             int64_t lv_s1, double lambda_od, double lambda_d, T* distance, T* mean, T* penalty, T* variance_out) {
  // Buffer rows of ld = D rounded up to whole vectors and whole tiles of 8 Gram rows.
  const int64_t ld = ffv::ceil_div(D, kRowMultiple<T>) * kRowMultiple<T>;
  // Slabs depend on B and D only, never on the thread count.
  const int64_t max_slabs = std::max<int64_t>(1, std::min(kMaxSlabs, kPartialBytes / (ld * ld * 8)));
  const int64_t slab_rows = std::max(kMinSlabRows, ffv::ceil_div(B, max_slabs));
  const int64_t slabs = ffv::ceil_div(B, slab_rows);
  std::vector<SlabSums> partials(static_cast<size_t>(slabs));
  for (SlabSums& s : partials) {
    s.gram.assign(static_cast<size_t>(ld * ld), 0.0);
    s.y.assign(static_cast<size_t>(ld), 0.0);
    s.variance.assign(static_cast<size_t>(ld), 0.0);
  }
  // Two threads from ~2^20 Gram products (~100 us of work); never more threads than slabs.
  const int threads =
      B * D * D >= ffv::kParallelCheap * 8 ? static_cast<int>(std::min<int64_t>(ffv::max_threads(), slabs)) : 1;
  const size_t scratch_size = static_cast<size_t>((kChunkRows + 3) * ld);  // sum_slab's scratch
  std::vector<std::vector<T>> buffers(static_cast<size_t>(threads), std::vector<T>(scratch_size));
  FFV_OMP(parallel for num_threads(threads) if(threads > 1) schedule(dynamic, 1))
  for (int64_t slab = 0; slab < slabs; ++slab) {
    const int64_t i0 = slab * slab_rows, i1 = std::min(B, i0 + slab_rows);
    sum_slab<T>(i0, i1, D, ld, mu, mu_s0, mu_s1, logvar, lv_s0, lv_s1, variance_out,
                buffers[static_cast<size_t>(threads > 1 ? ffv::thread_id() : 0)].data(),
                partials[static_cast<size_t>(slab)]);
  }
  // Slab partials in slab order, then the (D, D) arithmetic in double.
  SlabSums& total = partials[0];
  for (int64_t slab = 1; slab < slabs; ++slab) {
    const SlabSums& p = partials[static_cast<size_t>(slab)];
    for (int64_t k = 0; k < ld * ld; ++k) total.gram[k] += p.gram[k];
    for (int64_t d = 0; d < ld; ++d) {
      total.y[d] += p.y[d];
      total.variance[d] += p.variance[d];
    }
  }
  const double inv_b = 1.0 / static_cast<double>(B);
  double squares = 0.0, diagonal_squares = 0.0;
  for (int64_t j = 0; j < D; ++j) {
    mean[j] = static_cast<T>(static_cast<double>(mu[j * mu_s1]) + total.y[j] * inv_b);
    for (int64_t k = 0; k < D; ++k) {
      const double gram = total.gram[std::min(j, k) * ld + std::max(j, k)];  // the upper triangle
      double a = gram * inv_b - (total.y[j] * inv_b) * (total.y[k] * inv_b);
      if (j == k) a += total.variance[j] * inv_b - 1.0;
      const T rounded = static_cast<T>(a);
      distance[j * D + k] = rounded;
      // The penalty from A as the backward sees it (rounded to T), as the torch form computed it.
      const double stored = static_cast<double>(rounded);
      squares += stored * stored;
      if (j == k) diagonal_squares += stored * stored;
    }
  }
  // lambda_od * sum_{j != k} A^2 + lambda_d * sum_j A_jj^2
  *penalty = static_cast<T>(lambda_od * (squares - diagonal_squares) + lambda_d * diagonal_squares);
}

}  // namespace

extern "C" {

FFV_API ffv_status ffv_dip_penalty_forward(ffv_dtype dtype, int64_t B, int64_t D, const void* mu, int64_t mu_s0,
                                           int64_t mu_s1, const void* logvar, int64_t logvar_s0,
                                           int64_t logvar_s1, double lambda_od, double lambda_d, void* distance,
                                           void* mean, void* penalty, void* variance, void* /*stream*/) {
  static const char* entry = "ffv_dip_penalty_forward";
  FFV_CHECK(ffv::check_positive(entry, "B", B));
  FFV_CHECK(ffv::check_positive(entry, "D", D));
  FFV_CHECK(ffv::check_numel(entry, B, D, D));  // the Gram's B * D * D products
  if (B < 2) {
    return ffv::fail(FFV_ERR_INVALID_ARGUMENT,
                     std::string(entry) + ": B must be at least 2 (a batch covariance), got " + std::to_string(B));
  }
  FFV_CHECK(ffv::check_not_null(entry, "mu", mu));
  FFV_CHECK(ffv::check_not_null(entry, "distance", distance));
  FFV_CHECK(ffv::check_not_null(entry, "mean", mean));
  FFV_CHECK(ffv::check_not_null(entry, "penalty", penalty));
  if (logvar == nullptr && variance != nullptr) {
    return ffv::fail(FFV_ERR_INVALID_ARGUMENT, std::string(entry) + ": variance asked for without logvar");
  }
  return ffv::guarded(entry, [&] {
    return ffv::with_float_dtype(entry, dtype, [&](auto tag) {
      using T = decltype(tag);
      forward<T>(B, D, static_cast<const T*>(mu), mu_s0, mu_s1, static_cast<const T*>(logvar), logvar_s0, logvar_s1,
                 lambda_od, lambda_d, static_cast<T*>(distance), static_cast<T*>(mean), static_cast<T*>(penalty),
                 static_cast<T*>(variance));
      return FFV_OK;
    });
  });
}

}  // extern "C"
