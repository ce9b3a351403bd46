// permute_dims on the CPU (paper, Algorithm 1): every column of every group gets its own
// uniformly random permutation of the rows, the same one reference.philox_permutation draws.
//
// forward  key[g,i,d] = permutation_key(seed, (g*B + i)*D + d, i, row_bits)   (63 bits, distinct)
//          P[g,:,d]   = low row_bits of the keys of column (g, d), sorted ascending
//          out[g,i,d] = z[g, P[g,i,d], d];  index[g,i,d] = P[g,i,d] (int32, when asked)
// backward grad_z[g, index[g,i,d], d] = grad_out[g,i,d]
//
// Sorting: the high key bits are uniform random, so a counting sort on the top bits puts ~2
// keys in each bucket, and one insertion pass finishes the job (linear time, cache friendly).
// Work is split into (group, block of up to 16 columns) units; a unit sorts its columns into a
// scratch table and then writes whole row segments of `out`, so the writes stay sequential.
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu_common.h"
#include "philox.h"

namespace {

constexpr int64_t kMaxBlockColumns = 16;  // 16 float32 = one 64-byte cache line of an output row
constexpr int kMaxBucketBits = 16;        // counting-sort table of at most 65536 buckets
constexpr int64_t kInsertionOnlyRows = 32;

// Per-thread buffers, kept between calls (thread_local on the calling thread) so that repeated
// calls do not fault in fresh pages.
struct Scratch {
  std::vector<uint64_t> keys;    // [B] keys of one column, in row order
  std::vector<uint64_t> sorted;  // [B] the same keys, sorted
  std::vector<uint32_t> counts;  // [buckets + 1] counting-sort offsets
  std::vector<int32_t> perm;     // [block columns, B] source rows of the unit's columns
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Straight insertion sort: linear when every key is already near its place.
void insertion_sort(uint64_t* a, int64_t n) {
  for (int64_t i = 1; i < n; ++i) {
    const uint64_t x = a[i];
    int64_t j = i;
    while (j > 0 && a[j - 1] > x) {
      a[j] = a[j - 1];
      --j;
    }
    a[j] = x;
  }
}

// Source rows P[0..B) of column (g, d) into perm_column.
void column_permutation(uint64_t seed, int64_t g, int64_t B, int64_t D, int64_t d, int row_bits, Scratch& s,
                        int32_t* perm_column) {
  uint64_t* keys = s.keys.data();
  const uint64_t first_offset = static_cast<uint64_t>(g * B * D + d);
  for (int64_t i = 0; i < B; ++i) {
    keys[i] = static_cast<uint64_t>(
        ffv::permutation_key(seed, first_offset + static_cast<uint64_t>(i * D), i, row_bits));
  }
  const uint64_t row_mask = (uint64_t{1} << row_bits) - 1;
  const uint64_t* sorted = keys;
  if (B <= kInsertionOnlyRows) {
    insertion_sort(keys, B);
  } else {
    // Counting sort on the top bucket_bits of the 63-bit keys (uniform random bits).
    const int bucket_bits = std::min(row_bits - 1, kMaxBucketBits);
    const int shift = 63 - bucket_bits;
    const int64_t buckets = int64_t{1} << bucket_bits;
    uint32_t* counts = s.counts.data();
    std::memset(counts, 0, sizeof(uint32_t) * static_cast<size_t>(buckets + 1));
    for (int64_t i = 0; i < B; ++i) ++counts[(keys[i] >> shift) + 1];
    for (int64_t b = 0; b < buckets; ++b) counts[b + 1] += counts[b];
    uint64_t* out = s.sorted.data();
    for (int64_t i = 0; i < B; ++i) out[counts[keys[i] >> shift]++] = keys[i];
    insertion_sort(out, B);  // buckets are in order; only keys sharing a bucket move
    sorted = out;
  }
  for (int64_t i = 0; i < B; ++i) perm_column[i] = static_cast<int32_t>(sorted[i] & row_mask);
}

// Forward over raw elements of `Bits` (the permutation only moves bits: no arithmetic).
template <typename Bits>
ffv_status forward(int64_t G, int64_t B, int64_t D, const void* z_base, int64_t s0, int64_t s1, int64_t s2,
                   uint64_t seed, void* out_base, int32_t* index) {
  const Bits* z = static_cast<const Bits*>(z_base);  // [G, B, D], element (g, i, d) at g*s0 + i*s1 + d*s2
  Bits* out = static_cast<Bits*>(out_base);          // [G, B, D] contiguous
  const int row_bits = ffv::permutation_row_bits(B);
  const int threads = G * B * D >= ffv::kParallelRandom ? ffv::max_threads() : 1;

  // Column blocks: as wide as a cache line, narrower when that leaves threads idle.
  int64_t block = std::min(kMaxBlockColumns, D);
  while (block > 1 && G * ceil_div(D, block) < threads) block = ceil_div(block, 2);
  const int64_t blocks_per_group = ceil_div(D, block);
  const int64_t units = G * blocks_per_group;

  thread_local std::vector<Scratch> pool;
  if (static_cast<int>(pool.size()) < threads) pool.resize(static_cast<size_t>(threads));
  const int64_t buckets = int64_t{1} << std::min(row_bits - 1, kMaxBucketBits);
  for (int t = 0; t < threads; ++t) {
    Scratch& s = pool[static_cast<size_t>(t)];
    if (static_cast<int64_t>(s.keys.size()) < B) s.keys.resize(static_cast<size_t>(B));
    if (static_cast<int64_t>(s.sorted.size()) < B) s.sorted.resize(static_cast<size_t>(B));
    if (static_cast<int64_t>(s.counts.size()) < buckets + 1) s.counts.resize(static_cast<size_t>(buckets + 1));
    if (static_cast<int64_t>(s.perm.size()) < block * B) s.perm.resize(static_cast<size_t>(block * B));
  }

  // `pool` is the calling thread's; inside the region the name would mean each worker's own.
  Scratch* const scratch = pool.data();
  FFV_OMP(parallel for num_threads(threads) if(threads > 1) schedule(dynamic, 1))
  for (int64_t unit = 0; unit < units; ++unit) {
    Scratch& s = scratch[threads > 1 ? ffv::thread_id() : 0];
    const int64_t g = unit / blocks_per_group;
    const int64_t d0 = (unit % blocks_per_group) * block;
    const int64_t width = std::min(block, D - d0);
    int32_t* perm = s.perm.data();  // [width, B]
    for (int64_t c = 0; c < width; ++c) column_permutation(seed, g, B, D, d0 + c, row_bits, s, perm + c * B);
    const Bits* zg = z + g * s0 + d0 * s2;
    for (int64_t i = 0; i < B; ++i) {
      const int64_t row = (g * B + i) * D + d0;
      for (int64_t c = 0; c < width; ++c) out[row + c] = zg[perm[c * B + i] * s1 + c * s2];
      if (index != nullptr) {
        for (int64_t c = 0; c < width; ++c) index[row + c] = perm[c * B + i];
      }
    }
  }
  return FFV_OK;
}

template <typename Bits>
ffv_status backward(int64_t G, int64_t B, int64_t D, const void* grad_out_base, int64_t s0, int64_t s1,
                    int64_t s2, const int32_t* index, void* grad_z_base) {
  const Bits* grad_out = static_cast<const Bits*>(grad_out_base);  // [G, B, D] strided
  Bits* grad_z = static_cast<Bits*>(grad_z_base);                  // [G, B, D] contiguous
  bool out_of_range = false;
  FFV_OMP(parallel for if(G * B * D >= ffv::kParallelCheap) schedule(static) reduction(||: out_of_range))
  for (int64_t r = 0; r < G * B; ++r) {
    const int64_t g = r / B, i = r % B;
    for (int64_t d = 0; d < D; ++d) {
      const int32_t src = index[r * D + d];
      if (src < 0 || src >= B) {
        out_of_range = true;
        continue;
      }
      grad_z[(g * B + src) * D + d] = grad_out[g * s0 + i * s1 + d * s2];
    }
  }
  if (out_of_range) {
    return ffv::fail(FFV_ERR_INVALID_ARGUMENT,
                     "ffv_permute_dims_backward: index holds a row outside [0, B); it must be the index "
                     "written by ffv_permute_dims_forward for the same G, B, D");
  }
  return FFV_OK;
}

// Element bits of a dtype, or FFV_ERR_UNSUPPORTED_DTYPE.
template <typename Fn>
ffv_status with_element_bits(const char* entry, ffv_dtype dtype, Fn&& fn) {
  return ffv::with_dtype(entry, dtype, [&](auto tag) {
    constexpr size_t size = sizeof(tag);
    static_assert(size == 2 || size == 4 || size == 8, "element size");
    using Bits = std::conditional_t<size == 2, uint16_t, std::conditional_t<size == 4, uint32_t, uint64_t>>;
    return fn(Bits{});
  });
}

ffv_status check_sizes(const char* entry, int64_t G, int64_t B, int64_t D) {
  FFV_CHECK(ffv::check_positive(entry, "G", G));
  FFV_CHECK(ffv::check_positive(entry, "B", B));
  FFV_CHECK(ffv::check_positive(entry, "D", D));
  if (B > INT32_MAX) {
    return ffv::fail(FFV_ERR_INVALID_ARGUMENT, std::string(entry) + ": B must fit the int32 index, got " +
                                                   std::to_string(B));
  }
  return FFV_OK;
}

}  // namespace

extern "C" {

FFV_API ffv_status ffv_permute_dims_forward(ffv_dtype dtype, int64_t G, int64_t B, int64_t D, const void* z,
                                            int64_t z_s0, int64_t z_s1, int64_t z_s2, const int64_t* seed,
                                            void* out, int32_t* index, void* /*stream*/) {
  static const char* entry = "ffv_permute_dims_forward";
  FFV_CHECK(check_sizes(entry, G, B, D));
  FFV_CHECK(ffv::check_not_null(entry, "z", z));
  FFV_CHECK(ffv::check_not_null(entry, "seed", seed));
  FFV_CHECK(ffv::check_not_null(entry, "out", out));
  return ffv::guarded(entry, [&] {
    return with_element_bits(entry, dtype, [&](auto bits) {
      return forward<decltype(bits)>(G, B, D, z, z_s0, z_s1, z_s2, static_cast<uint64_t>(*seed), out, index);
    });
  });
}

FFV_API ffv_status ffv_permute_dims_backward(ffv_dtype dtype, int64_t G, int64_t B, int64_t D,
                                             const void* grad_out, int64_t grad_out_s0, int64_t grad_out_s1,
                                             int64_t grad_out_s2, const int32_t* index, void* grad_z,
                                             void* /*stream*/) {
  static const char* entry = "ffv_permute_dims_backward";
  FFV_CHECK(check_sizes(entry, G, B, D));
  FFV_CHECK(ffv::check_not_null(entry, "grad_out", grad_out));
  FFV_CHECK(ffv::check_not_null(entry, "index", index));
  FFV_CHECK(ffv::check_not_null(entry, "grad_z", grad_z));
  return with_element_bits(entry, dtype, [&](auto bits) {
    return backward<decltype(bits)>(G, B, D, grad_out, grad_out_s0, grad_out_s1, grad_out_s2, index, grad_z);
  });
}

}  // extern "C"
