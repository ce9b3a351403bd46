// permute_dims on CUDA (paper, Algorithm 1): every column (g, d) gets its own random
// permutation of the B rows, identical to fastfvae/reference/philox.py's philox_permutation.
//
// forward:  key[g,i,d] = permutation_key(seed, (g*B + i)*D + d, i, row_bits)  (63-bit, distinct
//           per column: the low row_bits bits hold i); P[g,:,d] = low bits of the column's keys
//           in ascending order; out[g,i,d] = z[g, P[g,i,d], d]; index[g,i,d] = P[g,i,d] (int32).
// backward: grad_z[g, index[g,i,d], d] = grad_out[g,i,d] (a scatter: index is a permutation).
//
// Launches. Forward, B <= kMaxBlockSortKeys: one launch, one block per column (grid-stride over
// the G*D columns): the block builds the column's keys in shared memory, padded to n =
// next_pow2(B) with INT64_MAX, bitonic-sorts them, and gathers. Larger B: a fallback in four
// launches per chunk of columns — build keys (column-major, in a workspace), segment offsets,
// CUB's DeviceSegmentedRadixSort::SortKeys (bundled with the CUDA toolkit), gather — in the
// caller's workspace (ABI 3, fastfvae.h; sized by ffv_permute_dims_workspace_bytes, whose CUB
// size query is a host call). Backward: one scatter launch.
// Values are moved bit for bit (no conversion), so every dtype is exact.
#include <cub/device/device_segmented_radix_sort.cuh>

#include "common.cuh"

namespace ffv {
namespace gpu {
namespace {

// In-block sort limit: 4096 keys * 8 bytes = 32 KiB of dynamic shared memory (below the
// 48 KiB that needs no opt-in on every architecture).
constexpr int64_t kMaxBlockSortKeys = 4096;
constexpr int kMaxSortThreads = 1024;
// Fallback chunk: at most this many keys (8 bytes each, two buffers) per CUB call.
constexpr int64_t kMaxChunkKeys = int64_t{1} << 26;

template <typename T>
__global__ void __launch_bounds__(kMaxSortThreads) permute_dims_block_sort_kernel(
    int64_t G, int64_t B, int64_t D,
    const T* __restrict__ z, int64_t z_s0, int64_t z_s1, int64_t z_s2,  // [G, B, D] strided input
    const int64_t* __restrict__ seed,                                  // [1] device int64: Philox key
    int64_t n,                                                         // next_pow2(B) <= kMaxBlockSortKeys
    int row_bits,                                                      // permutation_row_bits(B)
    T* __restrict__ out,                                               // [G, B, D] contiguous out
    int32_t* __restrict__ index) {                                     // [G, B, D] contiguous out, or NULL
  extern __shared__ int64_t keys[];  // [n] the current column's keys
  const uint64_t key = static_cast<uint64_t>(*seed);
  const int64_t row_mask = (int64_t{1} << row_bits) - 1;
  for (int64_t column = blockIdx.x; column < G * D; column += gridDim.x) {
    const int64_t g = column / D, d = column - g * D;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
      keys[i] = i < B ? cuda_math::column_key(key, g, i, d, B, D, row_bits) : cuda_math::kPadKey;
    __syncthreads();
    for (int64_t k = 2; k <= n; k <<= 1) {
      for (int64_t j = k >> 1; j > 0; j >>= 1) {
        for (int64_t p = threadIdx.x; p < n / 2; p += blockDim.x) cuda_math::bitonic_compare_exchange(keys, p, j, k);
        __syncthreads();
      }
    }
    for (int64_t i = threadIdx.x; i < B; i += blockDim.x) {
      const int64_t row = keys[i] & row_mask;
      const int64_t o = (g * B + i) * D + d;
      out[o] = z[g * z_s0 + row * z_s1 + d * z_s2];
      if (index != nullptr) index[o] = static_cast<int32_t>(row);
    }
    __syncthreads();  // keys are rewritten for the next column
  }
}

// Fallback step 1: keys of columns [first_column, first_column + S), column-major:
// keys[s*B + i] = key of row i of column first_column + s.
__global__ void __launch_bounds__(kElementwiseThreads) permute_dims_build_keys_kernel(
    int64_t B, int64_t D, int64_t first_column, int64_t S,
    const int64_t* __restrict__ seed,  // [1] device int64: Philox key
    int row_bits,                      // permutation_row_bits(B)
    uint64_t* __restrict__ keys) {     // [S, B] out (workspace)
  const uint64_t key = static_cast<uint64_t>(*seed);
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < S * B;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t s = e / B, i = e - s * B;
    const int64_t column = first_column + s, g = column / D, d = column - g * D;
    keys[e] = static_cast<uint64_t>(cuda_math::column_key(key, g, i, d, B, D, row_bits));
  }
}

// Fallback step 2: segment boundaries offsets[s] = s * B for s in [0, S] (S * B < 2^31).
__global__ void __launch_bounds__(kElementwiseThreads) permute_dims_offsets_kernel(
    int64_t B, int64_t S,
    int* __restrict__ offsets) {  // [S + 1] out (workspace)
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; s <= S;
       s += static_cast<int64_t>(gridDim.x) * blockDim.x)
    offsets[s] = static_cast<int>(s * B);
}

// Fallback step 4: gather through the sorted keys of columns [first_column, first_column + S).
template <typename T>
__global__ void __launch_bounds__(kElementwiseThreads) permute_dims_gather_kernel(
    int64_t B, int64_t D, int64_t first_column, int64_t S,
    const T* __restrict__ z, int64_t z_s0, int64_t z_s1, int64_t z_s2,  // [G, B, D] strided input
    const uint64_t* __restrict__ sorted_keys,                          // [S, B] each segment ascending
    int row_bits,
    T* __restrict__ out,                                               // [G, B, D] contiguous out
    int32_t* __restrict__ index) {                                     // [G, B, D] contiguous out, or NULL
  const uint64_t row_mask = (uint64_t{1} << row_bits) - 1;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < S * B;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t s = e / B, i = e - s * B;
    const int64_t column = first_column + s, g = column / D, d = column - g * D;
    const int64_t row = static_cast<int64_t>(sorted_keys[e] & row_mask);
    const int64_t o = (g * B + i) * D + d;
    out[o] = z[g * z_s0 + row * z_s1 + d * z_s2];
    if (index != nullptr) index[o] = static_cast<int32_t>(row);
  }
}

template <typename T>
__global__ void __launch_bounds__(kElementwiseThreads) permute_dims_backward_kernel(
    int64_t G, int64_t B, int64_t D,
    const T* __restrict__ grad_out, int64_t go_s0, int64_t go_s1, int64_t go_s2,  // [G, B, D] strided
    const int32_t* __restrict__ index,                                         // [G, B, D] contiguous
    T* __restrict__ grad_z) {                                                  // [G, B, D] contiguous out
  const int64_t n = G * B * D;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t g = e / (B * D), rest = e - g * B * D, i = rest / D, d = rest - i * D;
    const int64_t row = index[e];
    // A valid index is a permutation of each column, so every grad_z element is written once;
    // an out-of-range entry is skipped rather than written out of bounds.
    if (row >= 0 && row < B) grad_z[(g * B + row) * D + d] = grad_out[g * go_s0 + i * go_s1 + d * go_s2];
  }
}

// The fallback's workspace (B > kMaxBlockSortKeys), every part 256-byte aligned:
// keys_in uint64 [chunk*B] | keys_out uint64 [chunk*B] | offsets int32 [chunk+1] | CUB temp.
struct SortLayout {
  int64_t chunk;       // columns per CUB call; chunk * B <= kMaxChunkKeys (< 2^31, CUB's int sizes)
  int64_t key_bytes;   // one key buffer
  int64_t offset_bytes;
  int64_t temp_bytes;  // CUB's temporary storage for the largest and the last chunk
  int64_t total() const { return 2 * key_bytes + offset_bytes + temp_bytes; }
};

// Fills `layout`; CUB's size query is a host call that asks the current device (no launch).
ffv_status sort_layout(const char* entry, int64_t G, int64_t B, int64_t D, SortLayout* layout) {
  const int64_t columns = G * D;
  int64_t chunk = kMaxChunkKeys / B;
  if (chunk < 1) chunk = 1;
  if (chunk > columns) chunk = columns;
  size_t temp_bytes = 0;
  for (int64_t count : {chunk, columns % chunk}) {
    if (count == 0) continue;
    size_t bytes = 0;
    // The same argument types as the sort below (const keys in, const offsets): one instantiation.
    FFV_CHECK(check_call(
        cub::DeviceSegmentedRadixSort::SortKeys(nullptr, bytes, static_cast<const uint64_t*>(nullptr),
                                                static_cast<uint64_t*>(nullptr), static_cast<int>(count * B),
                                                static_cast<int>(count), static_cast<const int*>(nullptr),
                                                static_cast<const int*>(nullptr), 0, 63),
        entry, "cub::DeviceSegmentedRadixSort::SortKeys (size query)"));
    if (bytes > temp_bytes) temp_bytes = bytes;
  }
  layout->chunk = chunk;
  layout->key_bytes = align256(static_cast<int64_t>(sizeof(uint64_t)) * chunk * B);
  layout->offset_bytes = align256(static_cast<int64_t>(sizeof(int)) * (chunk + 1));
  layout->temp_bytes = align256(static_cast<int64_t>(temp_bytes));
  return FFV_OK;
}

// The fallback for B > kMaxBlockSortKeys (see the file comment), in the caller's workspace.
template <typename T>
ffv_status permute_dims_forward_sorted(const char* entry, int64_t G, int64_t B, int64_t D, const T* z,
                                       int64_t z_s0, int64_t z_s1, int64_t z_s2, const int64_t* seed, int row_bits,
                                       T* out, int32_t* index, void* workspace, int64_t workspace_bytes,
                                       cudaStream_t stream) {
  SortLayout layout{};
  FFV_CHECK(sort_layout(entry, G, B, D, &layout));
  FFV_CHECK(check_workspace(entry, workspace, workspace_bytes, layout.total()));
  const int64_t columns = G * D, chunk = layout.chunk;
  char* base = static_cast<char*>(workspace);
  uint64_t* keys_in = reinterpret_cast<uint64_t*>(base);                       // [chunk*B] unsorted keys
  uint64_t* keys_out = reinterpret_cast<uint64_t*>(base + layout.key_bytes);   // [chunk*B] sorted keys
  int* offsets = reinterpret_cast<int*>(base + 2 * layout.key_bytes);          // [chunk+1] segment starts
  void* temp = base + 2 * layout.key_bytes + layout.offset_bytes;              // CUB temp [temp_bytes]
  for (int64_t first = 0; first < columns; first += chunk) {
    const int64_t S = columns - first < chunk ? columns - first : chunk;
    permute_dims_build_keys_kernel<<<grid_for(S * B, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(
        B, D, first, S, seed, row_bits, keys_in);
    permute_dims_offsets_kernel<<<grid_for(S + 1, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(B, S,
                                                                                                        offsets);
    FFV_CHECK(check_launch(entry));
    size_t bytes = static_cast<size_t>(layout.temp_bytes);
    // The same argument types as the size query in sort_layout (const keys in, const offsets),
    // so CUB's dispatch is instantiated once, not twice.
    const uint64_t* sort_in = keys_in;
    const int* begin_offsets = offsets;
    FFV_CHECK(check_call(cub::DeviceSegmentedRadixSort::SortKeys(temp, bytes, sort_in, keys_out,
                                                                 static_cast<int>(S * B), static_cast<int>(S),
                                                                 begin_offsets, begin_offsets + 1, 0, 63, stream),
                         entry, "cub::DeviceSegmentedRadixSort::SortKeys"));
    permute_dims_gather_kernel<T><<<grid_for(S * B, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(
        B, D, first, S, z, z_s0, z_s1, z_s2, keys_out, row_bits, out, index);
    FFV_CHECK(check_launch(entry));
  }
  return FFV_OK;
}

}  // namespace
}  // namespace gpu
}  // namespace ffv

using namespace ffv::gpu;

// G, B, D >= 1, B fits the int32 index, G*B*D fits int64 (the CPU library's order and messages).
static ffv_status check_permute_sizes(const char* entry, int64_t G, int64_t B, int64_t D) {
  FFV_CHECK(check_positive(entry, "G", G));
  FFV_CHECK(check_positive(entry, "B", B));
  FFV_CHECK(check_positive(entry, "D", D));
  FFV_CHECK(check_int32_rows(entry, B));
  FFV_CHECK(check_numel(entry, G, B, D));
  return FFV_OK;
}

extern "C" {

FFV_API ffv_status ffv_permute_dims_forward(
    ffv_dtype dtype, int64_t G, int64_t B, int64_t D,
    const void* z, int64_t z_s0, int64_t z_s1, int64_t z_s2,
    const int64_t* seed,
    void* out, int32_t* index, void* workspace, int64_t workspace_bytes, void* stream) {
  const char* entry = "ffv_permute_dims_forward";
  return guarded(entry, [&]() -> ffv_status {
    FFV_CHECK(check_permute_sizes(entry, G, B, D));
    FFV_CHECK(check_not_null(entry, "z", z));
    FFV_CHECK(check_not_null(entry, "seed", seed));
    FFV_CHECK(check_not_null(entry, "out", out));
    const cudaStream_t s = as_stream(stream);
    const int row_bits = ffv::permutation_row_bits(B);
    return dispatch_dtype(entry, dtype, [&](auto type_tag) -> ffv_status {
      using T = decltype(type_tag);
      const T* zt = static_cast<const T*>(z);
      T* outt = static_cast<T*>(out);
      if (B > kMaxBlockSortKeys) return permute_dims_forward_sorted<T>(entry, G, B, D, zt, z_s0, z_s1, z_s2, seed,
                                                                       row_bits, outt, index, workspace,
                                                                       workspace_bytes, s);
      const int64_t n = ffv::cuda_math::next_pow2(B);
      int threads = static_cast<int>(n / 2 < kMaxSortThreads ? n / 2 : kMaxSortThreads);
      if (threads < 32) threads = 32;
      const int64_t columns = G * D;
      const unsigned blocks = static_cast<unsigned>(columns < kMaxGridBlocks ? columns : kMaxGridBlocks);
      permute_dims_block_sort_kernel<T><<<blocks, threads, sizeof(int64_t) * n, s>>>(
          G, B, D, zt, z_s0, z_s1, z_s2, seed, n, row_bits, outt, index);
      return check_launch(entry);
    });
  });
}

FFV_API ffv_status ffv_permute_dims_workspace_bytes(ffv_dtype dtype, int64_t G, int64_t B, int64_t D,
                                                    int64_t* bytes) {
  const char* entry = "ffv_permute_dims_workspace_bytes";
  return guarded(entry, [&]() -> ffv_status {
    FFV_CHECK(check_permute_sizes(entry, G, B, D));
    FFV_CHECK(check_not_null(entry, "bytes", bytes));
    int64_t acc = 0;
    FFV_CHECK(acc_bytes(entry, dtype, &acc));  // the dtype check only: keys do not depend on it
    if (B <= kMaxBlockSortKeys) {
      *bytes = 0;
      return FFV_OK;
    }
    SortLayout layout{};
    FFV_CHECK(sort_layout(entry, G, B, D, &layout));
    *bytes = layout.total();
    return FFV_OK;
  });
}

FFV_API ffv_status ffv_permute_dims_backward(
    ffv_dtype dtype, int64_t G, int64_t B, int64_t D,
    const void* grad_out, int64_t grad_out_s0, int64_t grad_out_s1, int64_t grad_out_s2,
    const int32_t* index,
    void* grad_z, void* stream) {
  const char* entry = "ffv_permute_dims_backward";
  return guarded(entry, [&]() -> ffv_status {
    FFV_CHECK(check_permute_sizes(entry, G, B, D));
    FFV_CHECK(check_not_null(entry, "grad_out", grad_out));
    FFV_CHECK(check_not_null(entry, "index", index));
    FFV_CHECK(check_not_null(entry, "grad_z", grad_z));
    const cudaStream_t s = as_stream(stream);
    return dispatch_dtype(entry, dtype, [&](auto type_tag) -> ffv_status {
      using T = decltype(type_tag);
      permute_dims_backward_kernel<T><<<grid_for(G * B * D, kElementwiseThreads), kElementwiseThreads, 0, s>>>(
          G, B, D, static_cast<const T*>(grad_out), grad_out_s0, grad_out_s1, grad_out_s2, index,
          static_cast<T*>(grad_z));
      return check_launch(entry);
    });
  });
}

}  // extern "C"
