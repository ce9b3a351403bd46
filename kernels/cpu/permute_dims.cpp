// permute_dims on the CPU (paper, Algorithm 1): every column of every group gets its own
// uniformly random permutation of the rows, the same one reference.philox_permutation draws.
//
// forward  key[g,i,d] = permutation_key(seed, (g*B + i)*D + d, i, row_bits)   (63 bits, distinct)
//          P[g,:,d]   = low row_bits of the keys of column (g, d), sorted ascending
//          out[g,i,d] = z[g, P[g,i,d], d];  index[g,i,d] = P[g,i,d] (int32, when asked)
// backward grad_z[g, index[g,i,d], d] = grad_out[g,i,d]
//
// Sorting: the high key bits are uniform random, so a counting sort on the top bits (two buckets
// a key) leaves only a few keys in each bucket, and an insertion pass finishes the job (linear
// time, cache friendly); with AVX-512 or AVX2, three vector rounds of compare-exchange first sort
// the buckets of up to three keys, so that the insertion pass's test rarely fails.
// Tall columns (a table larger than half the L2 cache) sort in two counting passes, so that each
// pass's table stays in L1: first on the top bits into buckets of ~128 keys, then each of those on
// the next 8 bits.
// Work is split into (group, block of up to 16 columns) units; a unit sorts its columns into a
// scratch table and then writes whole row segments of `out`, so the writes stay sequential.
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include <unistd.h>  // sysconf: the L2 size

#include "cpu_common.h"
#include "cpu_math.h"
#include "cpu_philox_simd.h"  // (also FFV_HAVE_X86_SIMD and <immintrin.h>)
#include "philox.h"

namespace {

constexpr int64_t kMaxBlockColumns = 16;  // 16 float32 = one 64-byte cache line of an output row
constexpr int kMaxBucketBits = 20;        // counting-sort table of at most 2^20 buckets
constexpr int64_t kInsertionOnlyRows = 32;
constexpr int64_t kMaxBlockElements = int64_t{1} << 21;  // rows x block columns held per thread
constexpr int64_t kTileRows = 64;  // rows per tile of the block's copies in and out (L1-sized tiles)

// Per-thread buffers, kept between calls (thread_local on the calling thread) so that repeated
// calls do not fault in fresh pages.
struct Scratch {
  std::vector<uint64_t> keys;    // [B] keys of one column, in row order
  std::vector<uint64_t> sorted;  // [B] the same keys, sorted
  std::vector<uint64_t> staged;  // [B] the keys after the first of two counting passes (tall columns)
  std::vector<uint32_t> counts;  // [buckets] counting-sort offsets
  std::vector<int32_t> perm;     // [block columns, B] source rows of the unit's columns
  std::vector<uint32_t> c0, c1;  // [B] Philox words 0 and 1 of one column
  std::vector<uint64_t> columns;   // [block columns, B] elements of z (8-byte words, any dtype)
  std::vector<uint64_t> gathered;  // [block columns, B] the permuted elements
};

// Counting-sort table size: about two buckets per key. Measured at B = 16384: half a bucket per
// key is 15% slower (the insertion pass mispredicts), four per key no faster (longer prefix sum).
constexpr int kExtraBucketBits = 1;
int bucket_bits_for(int row_bits) { return std::min(row_bits + kExtraBucketBits, kMaxBucketBits); }

// Counting sorts whose table (4 bytes a bucket) is larger than half the core's L2 cache run in two
// passes (the second on kSubBucketBits): one pass over a table that spills L2 loses to two small
// ones that stay in L1, while one pass over an L2-resident table wins (fewer sweeps, no per-bucket
// prefix sums). Measured, one thread, forward, CPU time, minimum of 30 calls: on a 2-core AMD EPYC
// (Zen 4, 1 MB L2) one pass is faster at 16384x64 (11.0 -> 9.95 ms; 128 KB table) and 65536x64
// (53.6 -> 52.0 ms; 512 KB table), equal at 262144x64 (2 MB table); an earlier machine measured
// two passes faster at 16384x64 (5.30 -> 5.09 ms for the sort alone; its L2 size was not recorded),
// hence a limit by L2 size rather than a constant. Without a reported L2 size the limit is 13 bits
// (a 32 KB table: one pass is as fast as two at 4096 rows).
int one_pass_max_bucket_bits() {
  static const int max_bits = [] {
#ifdef _SC_LEVEL2_CACHE_SIZE
    const long l2_bytes = sysconf(_SC_LEVEL2_CACHE_SIZE);
#else
    const long l2_bytes = 0;
#endif
    if (l2_bytes <= 0) return 13;
    int bits = 13;
    while (bits < kMaxBucketBits && (int64_t{4} << (bits + 1)) <= l2_bytes / 2) ++bits;
    return bits;
  }();
  return max_bits;
}
constexpr int kSubBucketBits = 8;

#ifdef FFV_HAVE_X86_SIMD
// Whether the AVX-512 paths below may run (the CPU has it and FASTFVAE_CPU_SIMD allows it).
bool have_avx512() { return ffv::simd::simd_level() == ffv::simd::SimdLevel::kAvx512; }

// Exclusive prefix sum of counts[0..n16) in place, n16 a multiple of 16; returns the total. Each
// vector's inclusive scan takes four shift-and-add steps in registers (lane i gets lanes i-1, i-2,
// i-4, i-8 added), so the loop's only serial dependency is the carry from one 16-bucket vector to
// the next instead of one add per bucket. The scalar loop was about a third of the counting pass
// (two buckets a key); this one made the forward at 16384x64 ~9 % faster (one thread, Zen 4).
__attribute__((target("avx512f"))) uint32_t exclusive_prefix_sum16_avx512(uint32_t* counts, int64_t n16) {
  constexpr __mmask16 all16 = 0xFFFF;  // (maskz forms: see transpose16x16_avx512)
  const __m512i zero = _mm512_setzero_si512();
  const __m512i last_lane = _mm512_set1_epi32(15);
  __m512i carry = zero;
  for (int64_t b = 0; b < n16; b += 16) {
    const __m512i counts16 = _mm512_loadu_si512(counts + b);
    __m512i inclusive = counts16;
    inclusive = _mm512_add_epi32(inclusive, _mm512_maskz_alignr_epi32(all16, inclusive, zero, 15));
    inclusive = _mm512_add_epi32(inclusive, _mm512_maskz_alignr_epi32(all16, inclusive, zero, 14));
    inclusive = _mm512_add_epi32(inclusive, _mm512_maskz_alignr_epi32(all16, inclusive, zero, 12));
    inclusive = _mm512_add_epi32(inclusive, _mm512_maskz_alignr_epi32(all16, inclusive, zero, 8));
    inclusive = _mm512_add_epi32(inclusive, carry);
    _mm512_storeu_si512(counts + b, _mm512_sub_epi32(inclusive, counts16));
    carry = _mm512_maskz_permutexvar_epi32(all16, last_lane, inclusive);
  }
  uint32_t total[16];
  _mm512_storeu_si512(total, carry);
  return total[0];
}

// The same with AVX2, 8 buckets a vector: the shifts work within 128-bit halves, so the upper
// half then adds the lower half's total.
__attribute__((target("avx2"))) uint32_t exclusive_prefix_sum8_avx2(uint32_t* counts, int64_t n8) {
  const __m256i zero = _mm256_setzero_si256();
  const __m256i last_lane = _mm256_set1_epi32(7);
  __m256i carry = zero;
  for (int64_t b = 0; b < n8; b += 8) {
    const __m256i counts8 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(counts + b));
    __m256i inclusive = _mm256_add_epi32(counts8, _mm256_slli_si256(counts8, 4));
    inclusive = _mm256_add_epi32(inclusive, _mm256_slli_si256(inclusive, 8));
    const __m256i lower_total = _mm256_permute2x128_si256(_mm256_shuffle_epi32(inclusive, 0xFF), zero, 0x08);
    inclusive = _mm256_add_epi32(_mm256_add_epi32(inclusive, lower_total), carry);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(counts + b), _mm256_sub_epi32(inclusive, counts8));
    carry = _mm256_permutevar8x32_epi32(inclusive, last_lane);
  }
  return static_cast<uint32_t>(_mm256_extract_epi32(carry, 0));
}
#endif

// Exclusive prefix sum of counts[0..n) in place; returns the total.
uint32_t exclusive_prefix_sum(uint32_t* counts, int64_t n) {
  uint32_t start = 0;
  int64_t b = 0;
#ifdef FFV_HAVE_X86_SIMD
  if (have_avx512()) {
    b = n / 16 * 16;
    start = exclusive_prefix_sum16_avx512(counts, b);
  } else if (ffv::simd::simd_level() == ffv::simd::SimdLevel::kAvx2) {
    b = n / 8 * 8;
    start = exclusive_prefix_sum8_avx2(counts, b);
  }
#endif
  for (; b < n; ++b) {
    const uint32_t count = counts[b];
    counts[b] = start;
    start += count;
  }
  return start;
}

// Stable counting sort of keys[0..n) into out[0..n) by (key >> shift) & mask, with counts[mask + 1].
void counting_pass(const uint64_t* keys, int64_t n, int shift, uint64_t mask, uint32_t* counts, uint64_t* out) {
  std::memset(counts, 0, sizeof(uint32_t) * static_cast<size_t>(mask + 1));
  for (int64_t i = 0; i < n; ++i) ++counts[(keys[i] >> shift) & mask];
  exclusive_prefix_sum(counts, static_cast<int64_t>(mask + 1));
  for (int64_t i = 0; i < n; ++i) out[counts[(keys[i] >> shift) & mask]++] = keys[i];
}

// Leading dimension of the per-column buffers: B rounded up to 16, plus 16 (one cache line of
// int32/float32) so that consecutive columns start in different cache sets.
int64_t padded_rows(int64_t B) { return ffv::ceil_div(B, 16) * 16 + 16; }

// One step of insertion sort: a[0..i) sorted on entry, a[0..i] on exit.
inline void insert_at(uint64_t* a, int64_t i) {
  const uint64_t x = a[i];
  if (a[i - 1] <= x) return;
  int64_t j = i;
  do {
    a[j] = a[j - 1];
    --j;
  } while (j > 0 && a[j - 1] > x);
  a[j] = x;
}

// Straight insertion sort: linear when every key is already near its place (the common case
// is one well-predicted comparison per key and no store).
void insertion_sort(uint64_t* a, int64_t n) {
  for (int64_t i = 1; i < n; ++i) insert_at(a, i);
}

// Compare-exchange of the adjacent pairs (first + 2j, first + 2j + 1) of a[0..n): one round of an
// odd-even transposition sort. After the counting pass the keys are grouped by bucket and only a
// bucket's own keys can be out of order (a pair across buckets is already ordered and stays put),
// so rounds starting at 0, 1, 0 sort every bucket of up to three keys: all but ~0.2 % of them at
// about two buckets a key. The insertion pass after them then meets almost no out-of-order key,
// and its branch, taken for ~1 key in 10 straight after the counting pass, stops mispredicting.
#ifdef FFV_HAVE_X86_SIMD
__attribute__((target("avx512f"))) void compare_exchange_pairs_avx512(uint64_t* a, int64_t n, int64_t first) {
  constexpr __mmask8 all8 = 0xFF, odd_lanes = 0xAA;  // (maskz forms: see transpose16x16_avx512)
  int64_t i = first;
  for (; i + 8 <= n; i += 8) {
    const __m512i keys = _mm512_loadu_si512(a + i);
    const __m512i partners = _mm512_maskz_permutex_epi64(all8, keys, 0xB1);  // lanes 2j and 2j + 1 swapped
    const __m512i low = _mm512_maskz_min_epu64(all8, keys, partners);
    const __m512i high = _mm512_maskz_max_epu64(all8, keys, partners);
    _mm512_storeu_si512(a + i, _mm512_mask_blend_epi64(odd_lanes, low, high));
  }
  for (; i + 1 < n; i += 2) {
    const uint64_t x = a[i], y = a[i + 1];
    a[i] = std::min(x, y);
    a[i + 1] = std::max(x, y);
  }
}
#endif

#ifdef FFV_HAVE_X86_SIMD
// insertion_sort for arrays with few keys out of place: eight "a[i-1] > a[i]" tests a vector,
// and a scalar insertion step only in a vector that has a key out of place.
__attribute__((target("avx512f"))) void sparse_insertion_sort_avx512(uint64_t* a, int64_t n) {
  int64_t i = 1;
  for (; i + 8 <= n; i += 8) {
    if (_mm512_cmpgt_epu64_mask(_mm512_loadu_si512(a + i - 1), _mm512_loadu_si512(a + i)) == 0) continue;
    for (int64_t j = i; j < i + 8; ++j) insert_at(a, j);
  }
  for (; i < n; ++i) insert_at(a, i);
}

// The same two with AVX2, four keys a vector. AVX2 compares 64-bit lanes as signed numbers only:
// right here, as the keys' bit 63 is 0 (63-bit keys).
__attribute__((target("avx2"))) void compare_exchange_pairs_avx2(uint64_t* a, int64_t n, int64_t first) {
  int64_t i = first;
  for (; i + 4 <= n; i += 4) {
    const __m256i keys = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i));
    const __m256i partners = _mm256_permute4x64_epi64(keys, 0xB1);  // lanes 2j and 2j + 1 swapped
    const __m256i greater = _mm256_cmpgt_epi64(keys, partners);
    const __m256i low = _mm256_blendv_epi8(keys, partners, greater);
    const __m256i high = _mm256_blendv_epi8(partners, keys, greater);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(a + i), _mm256_blend_epi32(low, high, 0xCC));
  }
  for (; i + 1 < n; i += 2) {
    const uint64_t x = a[i], y = a[i + 1];
    a[i] = std::min(x, y);
    a[i + 1] = std::max(x, y);
  }
}

__attribute__((target("avx2"))) void sparse_insertion_sort_avx2(uint64_t* a, int64_t n) {
  int64_t i = 1;
  for (; i + 4 <= n; i += 4) {
    const __m256i before = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i - 1));
    const __m256i keys = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i));
    if (_mm256_testz_si256(_mm256_cmpgt_epi64(before, keys), _mm256_cmpgt_epi64(before, keys))) continue;
    for (int64_t j = i; j < i + 4; ++j) insert_at(a, j);
  }
  for (; i < n; ++i) insert_at(a, i);
}
#endif

void order_buckets(uint64_t* a, int64_t n) {
#ifdef FFV_HAVE_X86_SIMD
  if (have_avx512()) {
    compare_exchange_pairs_avx512(a, n, 0);
    compare_exchange_pairs_avx512(a, n, 1);
    compare_exchange_pairs_avx512(a, n, 0);
    sparse_insertion_sort_avx512(a, n);
    return;
  }
  if (ffv::simd::simd_level() == ffv::simd::SimdLevel::kAvx2) {
    compare_exchange_pairs_avx2(a, n, 0);
    compare_exchange_pairs_avx2(a, n, 1);
    compare_exchange_pairs_avx2(a, n, 0);
    sparse_insertion_sort_avx2(a, n);
    return;
  }
#endif
  insertion_sort(a, n);
}

// Sorted keys of column (g, d) of B rows: returns s.keys or s.sorted, whichever holds them.
FFV_CLONES const uint64_t* sorted_column_keys(uint64_t seed, int64_t g, int64_t B, int64_t D, int64_t d,
                                              int row_bits, Scratch& s) {
  uint64_t* keys = s.keys.data();
  uint32_t* c0 = s.c0.data();
  uint32_t* c1 = s.c1.data();
  // permutation_key: random high bits (c0 & 0x7fffffff) << 32 | c1, low row_bits = the row.
  ffv::simd::philox_c0c1(seed, static_cast<uint64_t>(g * B * D + d), static_cast<uint64_t>(D), B, c0, c1);
  const uint32_t row_mask32 = static_cast<uint32_t>((uint64_t{1} << row_bits) - 1);
  const auto key_of = [&](int64_t i) {
    const uint32_t low = (c1[i] & ~row_mask32) | static_cast<uint32_t>(i);
    return (static_cast<uint64_t>(c0[i] & 0x7FFFFFFFu) << 32) | low;
  };
  if (B <= kInsertionOnlyRows) {
    for (int64_t i = 0; i < B; ++i) keys[i] = key_of(i);
    insertion_sort(keys, B);
    return keys;
  }
  // Counting sort on the top bucket_bits key bits (uniform random bits of c0), about two
  // buckets per key, then an insertion pass that only moves keys sharing a bucket.
  const int bucket_bits = bucket_bits_for(row_bits);
  uint32_t* counts = s.counts.data();
  uint64_t* sorted = s.sorted.data();
  for (int64_t i = 0; i < B; ++i) keys[i] = key_of(i);
  if (bucket_bits <= one_pass_max_bucket_bits()) {
    counting_pass(keys, B, 63 - bucket_bits, (uint64_t{1} << bucket_bits) - 1, counts, sorted);
  } else {
    // Two passes: the top (bucket_bits - kSubBucketBits) bits into `staged` (~128 keys per
    // bucket), then each bucket on the next kSubBucketBits bits into `sorted`. Both tables fit L1.
    const int top_bits = bucket_bits - kSubBucketBits;
    const uint64_t top_mask = (uint64_t{1} << top_bits) - 1;
    const uint64_t sub_mask = (uint64_t{1} << kSubBucketBits) - 1;
    uint64_t* staged = s.staged.data();
    uint32_t* bucket_end = counts;  // after counting_pass: counts[b] = end of top bucket b
    counting_pass(keys, B, 63 - top_bits, top_mask, bucket_end, staged);
    uint32_t sub_counts[uint64_t{1} << kSubBucketBits];
    uint32_t begin = 0;
    for (uint64_t b = 0; b <= top_mask; ++b) {
      const uint32_t end = bucket_end[b];
      counting_pass(staged + begin, end - begin, 63 - bucket_bits, sub_mask, sub_counts, sorted + begin);
      begin = end;
    }
  }
  order_buckets(sorted, B);
  return sorted;
}

// dst row c (c < 16) = column c of the 16 x 16 block of 32-bit elements whose row k starts at
// src + k*src_stride; dst row c starts at dst + c*dst_stride. Three rounds of shuffles: 32-bit
// pairs, 64-bit pairs (each 128-bit lane then holds a 4 x 4 block transposed), 128-bit lanes.
#ifdef FFV_HAVE_X86_SIMD
__attribute__((target("avx512f"))) void transpose16x16_avx512(const uint32_t* src, int64_t src_stride,
                                                               uint32_t* dst, int64_t dst_stride) {
  // (The maskz forms with all-ones masks are the plain instructions; GCC 12's unmasked intrinsics
  // trip -Wuninitialized on their internal _mm512_undefined_epi32.)
  constexpr __mmask16 all16 = 0xFFFF;
  constexpr __mmask8 all8 = 0xFF;
  __m512i r[16], t[16];
  for (int k = 0; k < 16; ++k) r[k] = _mm512_loadu_si512(src + k * src_stride);
  for (int m = 0; m < 8; ++m) {  // lane L of t[2m]: r2m[4L], r2m+1[4L], r2m[4L+1], r2m+1[4L+1]
    t[2 * m] = _mm512_maskz_unpacklo_epi32(all16, r[2 * m], r[2 * m + 1]);
    t[2 * m + 1] = _mm512_maskz_unpackhi_epi32(all16, r[2 * m], r[2 * m + 1]);
  }
  for (int q = 0; q < 4; ++q) {  // lane L of r[4q + j]: rows 4q..4q+3 of column 4L + j
    r[4 * q] = _mm512_maskz_unpacklo_epi64(all8, t[4 * q], t[4 * q + 2]);
    r[4 * q + 1] = _mm512_maskz_unpackhi_epi64(all8, t[4 * q], t[4 * q + 2]);
    r[4 * q + 2] = _mm512_maskz_unpacklo_epi64(all8, t[4 * q + 1], t[4 * q + 3]);
    r[4 * q + 3] = _mm512_maskz_unpackhi_epi64(all8, t[4 * q + 1], t[4 * q + 3]);
  }
  for (int j = 0; j < 4; ++j) {  // column 4L + j = lane L of r[j], r[4+j], r[8+j], r[12+j]
    const __m512i x0 = _mm512_maskz_shuffle_i32x4(all16, r[j], r[4 + j], 0x44), x1 = _mm512_maskz_shuffle_i32x4(all16, r[j], r[4 + j], 0xEE);
    const __m512i y0 = _mm512_maskz_shuffle_i32x4(all16, r[8 + j], r[12 + j], 0x44);
    const __m512i y1 = _mm512_maskz_shuffle_i32x4(all16, r[8 + j], r[12 + j], 0xEE);
    _mm512_storeu_si512(dst + j * dst_stride, _mm512_maskz_shuffle_i32x4(all16, x0, y0, 0x88));
    _mm512_storeu_si512(dst + (4 + j) * dst_stride, _mm512_maskz_shuffle_i32x4(all16, x0, y0, 0xDD));
    _mm512_storeu_si512(dst + (8 + j) * dst_stride, _mm512_maskz_shuffle_i32x4(all16, x1, y1, 0x88));
    _mm512_storeu_si512(dst + (12 + j) * dst_stride, _mm512_maskz_shuffle_i32x4(all16, x1, y1, 0xDD));
  }
}

#endif

// The same for an 8 x 8 block with AVX2: 32-bit pairs, 64-bit pairs (each 128-bit half then holds
// a 4 x 4 block transposed), 128-bit halves.
#ifdef FFV_HAVE_X86_SIMD
__attribute__((target("avx2"))) void transpose8x8_avx2(const uint32_t* src, int64_t src_stride, uint32_t* dst,
                                                        int64_t dst_stride) {
  __m256i r[8], t[8];
  for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + k * src_stride));
  for (int m = 0; m < 4; ++m) {  // t[2m]: r2m[0], r2m+1[0], r2m[1], r2m+1[1] | the same for 4, 5
    t[2 * m] = _mm256_unpacklo_epi32(r[2 * m], r[2 * m + 1]);
    t[2 * m + 1] = _mm256_unpackhi_epi32(r[2 * m], r[2 * m + 1]);
  }
  for (int q = 0; q < 2; ++q) {  // r[4q + j]: rows 4q..4q+3 of column j | of column j + 4
    r[4 * q] = _mm256_unpacklo_epi64(t[4 * q], t[4 * q + 2]);
    r[4 * q + 1] = _mm256_unpackhi_epi64(t[4 * q], t[4 * q + 2]);
    r[4 * q + 2] = _mm256_unpacklo_epi64(t[4 * q + 1], t[4 * q + 3]);
    r[4 * q + 3] = _mm256_unpackhi_epi64(t[4 * q + 1], t[4 * q + 3]);
  }
  for (int j = 0; j < 4; ++j) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + j * dst_stride), _mm256_permute2x128_si256(r[j], r[4 + j], 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + (4 + j) * dst_stride),
                        _mm256_permute2x128_si256(r[j], r[4 + j], 0x31));
  }
}
#endif

// Copies between rows (row i of a block: 16 consecutive 32-bit elements at rows + i*row_stride)
// and columns (column c: B elements at columns + c*ld) for rows [0, rows_done); returns
// rows_done, a multiple of 16 with AVX-512 and of 8 with AVX2 (0 without either): the caller
// copies the rest. The copies in and out were most of the op's time as scalar loops (a load and a
// store per element).
// Both directions share one loop: `to_columns` picks which side each transpose reads.
int64_t transpose_rows16(uint32_t* rows, int64_t row_stride, int64_t B, uint32_t* columns, int64_t ld,
                         bool to_columns) {
#ifdef FFV_HAVE_X86_SIMD
  // A block's rows start at rows + i*row_stride + c, its columns at columns + c*ld + i.
  const auto block = [&](auto transpose, int64_t i0, int64_t c0) {
    uint32_t* row_side = rows + i0 * row_stride + c0;
    uint32_t* column_side = columns + c0 * ld + i0;
    if (to_columns) transpose(row_side, row_stride, column_side, ld);
    else transpose(column_side, ld, row_side, row_stride);
  };
  if (have_avx512()) {
    const int64_t done = B / 16 * 16;
    for (int64_t i0 = 0; i0 < done; i0 += 16) block(transpose16x16_avx512, i0, 0);
    return done;
  }
  if (ffv::simd::simd_level() != ffv::simd::SimdLevel::kAvx2) return 0;
  const int64_t done = B / 8 * 8;
  for (int64_t i0 = 0; i0 < done; i0 += 8) {
    block(transpose8x8_avx2, i0, 0);
    block(transpose8x8_avx2, i0, 8);
  }
  return done;
#else
  (void)rows, (void)row_stride, (void)B, (void)columns, (void)ld, (void)to_columns;
  return 0;
#endif
}

int64_t rows_to_columns16(const uint32_t* rows, int64_t row_stride, int64_t B, uint32_t* columns, int64_t ld) {
  return transpose_rows16(const_cast<uint32_t*>(rows), row_stride, B, columns, ld, true);  // rows only read
}

int64_t columns_to_rows16(const uint32_t* columns, int64_t ld, int64_t B, uint32_t* rows, int64_t row_stride) {
  return transpose_rows16(rows, row_stride, B, const_cast<uint32_t*>(columns), ld, false);  // columns only read
}

// One unit of work: columns [d0, d0 + width) of group g. The block of z is first copied into
// per-column buffers (sequential reads of z), each column is gathered from its buffer (random
// reads that stay in cache), and the results go out as row segments (sequential writes).
template <typename Bits>
FFV_CLONES void permute_block(uint64_t seed, int64_t g, int64_t B, int64_t D, int64_t d0, int64_t width,
                              int row_bits, const Bits* zg /* z[g, 0, d0] */, int64_t s1, int64_t s2,
                              Bits* out, int32_t* index, Scratch& s) {
  // Column buffers [width, ld]: ld = B + padding, so that the width streams of one row do not
  // all map to the same cache set (a power-of-two B would make them alias).
  const int64_t ld = padded_rows(B);
  Bits* columns = reinterpret_cast<Bits*>(s.columns.data());    // input columns
  Bits* gathered = reinterpret_cast<Bits*>(s.gathered.data());  // permuted columns
  int32_t* perm = s.perm.data();                                 // source rows
  // Copy in, in tiles of kTileRows rows: each column's part of a tile is one run of consecutive
  // stores. (Row by row, each row's `width` stores go to `width` different lines, far apart:
  // that loop took a fifth of the op's time at 16384 x 64.)
  // Full blocks of 16 contiguous 32-bit columns: register transposes (16 x 16 with AVX-512, 8 x 8 with AVX2).
  constexpr bool kWords = sizeof(Bits) == 4;
  const bool transposable = kWords && width == 16;
  const int64_t copied_in = transposable && s2 == 1 ? rows_to_columns16(reinterpret_cast<const uint32_t*>(zg), s1, B,
                                                                        reinterpret_cast<uint32_t*>(columns), ld)
                                                    : 0;
  for (int64_t i0 = copied_in; i0 < B; i0 += kTileRows) {
    const int64_t i1 = std::min(B, i0 + kTileRows);
    for (int64_t c = 0; c < width; ++c) {
      Bits* column = columns + c * ld;
      const Bits* source = zg + c * s2;
      for (int64_t i = i0; i < i1; ++i) column[i] = source[i * s1];
    }
  }
  const uint64_t row_mask = (uint64_t{1} << row_bits) - 1;
  for (int64_t c = 0; c < width; ++c) {
    const uint64_t* sorted = sorted_column_keys(seed, g, B, D, d0 + c, row_bits, s);
    const Bits* column = columns + c * ld;
    Bits* column_out = gathered + c * ld;
    if (index == nullptr) {  // no index asked for: the source rows are not kept
      for (int64_t i = 0; i < B; ++i) column_out[i] = column[sorted[i] & row_mask];
      continue;
    }
    int32_t* column_perm = perm + c * ld;
    for (int64_t i = 0; i < B; ++i) {
      const int32_t src = static_cast<int32_t>(sorted[i] & row_mask);
      column_perm[i] = src;
      column_out[i] = column[src];
    }
  }
  // Copy out: register transposes for full blocks, then tiles (per column, a run of consecutive loads).
  Bits* const out_block = out + (g * B) * D + d0;
  int32_t* const index_block = index != nullptr ? index + (g * B) * D + d0 : nullptr;
  int64_t copied_out = 0;
  if (transposable) {
    copied_out = columns_to_rows16(reinterpret_cast<const uint32_t*>(gathered), ld, B,
                                   reinterpret_cast<uint32_t*>(out_block), D);
    if (index_block != nullptr && copied_out > 0) {
      columns_to_rows16(reinterpret_cast<const uint32_t*>(perm), ld, B, reinterpret_cast<uint32_t*>(index_block), D);
    }
  }
  for (int64_t i0 = copied_out; i0 < B; i0 += kTileRows) {
    const int64_t i1 = std::min(B, i0 + kTileRows);
    for (int64_t c = 0; c < width; ++c) {
      const Bits* column = gathered + c * ld;
      Bits* target = out + (g * B) * D + d0 + c;
      for (int64_t i = i0; i < i1; ++i) target[i * D] = column[i];
    }
    if (index != nullptr) {
      for (int64_t c = 0; c < width; ++c) {
        const int32_t* column = perm + c * ld;
        int32_t* target = index + (g * B) * D + d0 + c;
        for (int64_t i = i0; i < i1; ++i) target[i * D] = column[i];
      }
    }
  }
}

// A buffer of at least `size` elements (never shrunk: scratch is kept between calls).
template <typename Buffer>
void grow(Buffer& buffer, int64_t size) {
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(static_cast<size_t>(size));
}

// The calling thread's scratch buffers, one per worker thread, kept between calls (`threads` or
// more of them).
std::vector<Scratch>& scratch_pool(int threads) {
  thread_local std::vector<Scratch> pool;
  if (static_cast<int>(pool.size()) < threads) pool.resize(static_cast<size_t>(threads));
  return pool;
}

// Forward over raw elements of `Bits` (the permutation only moves bits: no arithmetic).
template <typename Bits>
ffv_status forward(int64_t G, int64_t B, int64_t D, const void* z_base, int64_t s0, int64_t s1, int64_t s2,
                   uint64_t seed, void* out_base, int32_t* index) {
  const Bits* z = static_cast<const Bits*>(z_base);  // [G, B, D], element (g, i, d) at g*s0 + i*s1 + d*s2
  Bits* out = static_cast<Bits*>(out_base);          // [G, B, D] contiguous
  const int row_bits = ffv::permutation_row_bits(B);
  const int threads = G * B * D >= ffv::kParallelExpensive ? ffv::max_threads() : 1;

  // Column blocks: as wide as a cache line, narrower when that leaves threads idle.
  int64_t block = std::min(kMaxBlockColumns, D);
  while (block > 1 && G * ffv::ceil_div(D, block) < threads) block = ffv::ceil_div(block, 2);
  // ... and narrower for very tall columns, so that the per-thread buffers stay bounded.
  block = std::max<int64_t>(1, std::min(block, kMaxBlockElements / B));
  const int64_t blocks_per_group = ffv::ceil_div(D, block);
  const int64_t units = G * blocks_per_group;

  std::vector<Scratch>& pool = scratch_pool(threads);
  const int64_t buckets = int64_t{1} << bucket_bits_for(row_bits);
  const int64_t ld = padded_rows(B);
  const size_t column_words = static_cast<size_t>((block * ld * static_cast<int64_t>(sizeof(Bits)) + 7) / 8);
  for (int t = 0; t < threads; ++t) {
    Scratch& s = pool[static_cast<size_t>(t)];
    grow(s.keys, B);
    grow(s.sorted, B);
    grow(s.staged, bucket_bits_for(row_bits) > one_pass_max_bucket_bits() ? B : 0);
    grow(s.c0, B);
    grow(s.c1, B);
    grow(s.counts, buckets);
    grow(s.perm, block * ld);
    grow(s.columns, static_cast<int64_t>(column_words));
    grow(s.gathered, static_cast<int64_t>(column_words));
  }

  // `pool` is the calling thread's; inside the region the name would mean each worker's own.
  Scratch* const scratch = pool.data();
  FFV_OMP(parallel for num_threads(threads) if(threads > 1) schedule(dynamic, 1))
  for (int64_t unit = 0; unit < units; ++unit) {
    const int64_t g = unit / blocks_per_group;
    const int64_t d0 = (unit % blocks_per_group) * block;
    permute_block<Bits>(seed, g, B, D, d0, std::min(block, D - d0), row_bits, z + g * s0 + d0 * s2, s1, s2, out,
                        index, scratch[threads > 1 ? ffv::thread_id() : 0]);
  }
  // Keep buffers for the next call of a typical size; give back those of an outsized one.
  if (B * (block + 1) > kMaxBlockElements) pool.clear();
  return FFV_OK;
}

ffv_status out_of_range_error() {
  return ffv::fail(FFV_ERR_INVALID_ARGUMENT,
                   "ffv_permute_dims_backward: index holds a row outside [0, B); it must be the index "
                   "written by ffv_permute_dims_forward for the same G, B, D");
}

// Backward of 16 float32 columns [d0, d0 + 16) of group g, with the forward's structure: grad_out's
// and the index's columns copied in by 16 x 16 transposes, each column scattered within its own
// buffer (B 4-byte elements: L1/L2-resident), and the block copied out by transposes. The plain
// scatter writes every element to a random row of grad_z, a fresh cache line each time beyond the
// L2 once grad_z outgrows it. Returns false when the index holds a row outside [0, B).
#ifdef FFV_HAVE_X86_SIMD
bool scatter_block16(int64_t g, int64_t B, int64_t D, int64_t d0, const uint32_t* grad_out, int64_t s0,
                     int64_t s1, const int32_t* index, uint32_t* grad_z, Scratch& s) {
  const int64_t ld = padded_rows(B);
  uint32_t* values = reinterpret_cast<uint32_t*>(s.columns.data());   // [16, ld] grad_out's columns
  uint32_t* placed = reinterpret_cast<uint32_t*>(s.gathered.data());  // [16, ld] grad_z's columns
  uint32_t* rows = reinterpret_cast<uint32_t*>(s.perm.data());        // [16, ld] the index's columns
  const uint32_t* grad_rows = grad_out + g * s0 + d0;                  // row i at grad_rows + i*s1
  const uint32_t* index_rows = reinterpret_cast<const uint32_t*>(index) + g * B * D + d0;  // row i at + i*D
  uint32_t* target_rows = grad_z + g * B * D + d0;                     // row i at + i*D
  const int64_t done = rows_to_columns16(grad_rows, s1, B, values, ld);
  rows_to_columns16(index_rows, D, B, rows, ld);
  for (int64_t i = done; i < B; ++i) {
    for (int64_t c = 0; c < 16; ++c) {
      values[c * ld + i] = grad_rows[i * s1 + c];
      rows[c * ld + i] = index_rows[i * D + c];
    }
  }
  bool in_range = true;
  for (int64_t c = 0; c < 16; ++c) {
    const uint32_t* column_rows = rows + c * ld;
    const uint32_t* column_values = values + c * ld;
    uint32_t* column_placed = placed + c * ld;
    for (int64_t i = 0; i < B; ++i) {
      const uint32_t src = column_rows[i];  // an int32 row: a negative one wraps above B
      if (src >= static_cast<uint64_t>(B)) {
        in_range = false;
        continue;
      }
      column_placed[src] = column_values[i];
    }
  }
  columns_to_rows16(placed, ld, B, target_rows, D);
  for (int64_t i = done; i < B; ++i) {
    for (int64_t c = 0; c < 16; ++c) target_rows[i * D + c] = placed[c * ld + i];
  }
  return in_range;
}

// The blocked backward over every 16-column block (G x D/16 units over the threads); the caller
// checks that it applies (float32-sized elements, D a multiple of 16, unit column stride, AVX-512,
// B * 16 within kMaxBlockElements).
ffv_status backward_blocked(int64_t G, int64_t B, int64_t D, const uint32_t* grad_out, int64_t s0, int64_t s1,
                            const int32_t* index, uint32_t* grad_z) {
  const int threads = G * B * D >= ffv::kParallelCheap ? ffv::max_threads() : 1;
  std::vector<Scratch>& pool = scratch_pool(threads);
  const int64_t words = ffv::ceil_div(16 * padded_rows(B) * 4, 8);  // one [16, ld] buffer of 4-byte elements
  for (int t = 0; t < threads; ++t) {
    Scratch& s = pool[static_cast<size_t>(t)];
    grow(s.columns, words);
    grow(s.gathered, words);
    grow(s.perm, 2 * words);  // int32 elements
  }
  Scratch* const scratch = pool.data();
  const int64_t blocks = D / 16;
  bool out_of_range = false;
  FFV_OMP(parallel for num_threads(threads) if(threads > 1) schedule(dynamic, 1) reduction(||: out_of_range))
  for (int64_t unit = 0; unit < G * blocks; ++unit) {
    const int64_t g = unit / blocks, d0 = (unit % blocks) * 16;
    if (!scatter_block16(g, B, D, d0, grad_out, s0, s1, index, grad_z, scratch[threads > 1 ? ffv::thread_id() : 0])) {
      out_of_range = true;
    }
  }
  if (B * 17 > kMaxBlockElements) pool.clear();  // as the forward: give back an outsized call's buffers
  return out_of_range ? out_of_range_error() : FFV_OK;
}
#endif

// From this many elements (8 MB of float32) the blocked backward is the faster. Measured, one
// thread, 2-core AMD EPYC (Zen 4, 1 MB L2, 32 MB L3), medians, plain -> blocked: 65536x64 19.8 ->
// 13.2 ms with cold caches (23.7 -> 15.4 warm), 32768x64 5.3 -> 4.9 ms (6.4 -> 5.4 warm); at
// 16384x64 and 4096x64 the blocked one is ~8 % slower (its three column buffers spill the L2
// while the plain scatter's 4 MB target stays in L3).
constexpr int64_t kBlockedBackwardMinElements = int64_t{1} << 21;

// Backward: a scatter through the forward's index. Every row of grad_z receives writes from all
// over the index, so when two threads split the rows they write the same cache lines; while a
// group's grad_z is small enough for that to happen often (up to 8 MB), the threads split the
// columns instead, in 64-byte blocks that one thread owns. Measured (2 threads, 2-core Xeon):
// B=4096, D=32 431 -> 188 us and 16384x64 3.2 -> 2.5 ms with the column split; at 65536x64
// (16 MB) the row split is faster (10.6 against 15.6 ms), and on one thread the plain row loop.
constexpr int64_t kColumnSplitMaxBytes = int64_t{8} << 20;

template <typename Bits>
ffv_status backward(int64_t G, int64_t B, int64_t D, const void* grad_out_base, int64_t s0, int64_t s1,
                    int64_t s2, const int32_t* index, void* grad_z_base) {
  const Bits* grad_out = static_cast<const Bits*>(grad_out_base);  // [G, B, D] strided
  Bits* grad_z = static_cast<Bits*>(grad_z_base);                  // [G, B, D] contiguous
#ifdef FFV_HAVE_X86_SIMD
  if constexpr (sizeof(Bits) == 4) {
    // (B * 16 bounded as the forward's blocks are: three [16, B] buffers a thread)
    if (have_avx512() && D % 16 == 0 && s2 == 1 && B * D >= kBlockedBackwardMinElements &&
        B * 16 <= kMaxBlockElements) {
      return backward_blocked(G, B, D, reinterpret_cast<const uint32_t*>(grad_out), s0, s1, index,
                              reinterpret_cast<uint32_t*>(grad_z));
    }
  }
#endif
  const bool parallel = G * B * D >= ffv::kParallelCheap && ffv::max_threads() > 1;
  const bool column_split = parallel && B * D * static_cast<int64_t>(sizeof(Bits)) <= kColumnSplitMaxBytes;
  // A unit is (group g, rows [i0, i1), columns [d0, d1)): whole groups of rows for the row split,
  // all rows of one 64-byte column block for the column split.
  const int64_t block = column_split ? std::max<int64_t>(1, 64 / static_cast<int64_t>(sizeof(Bits))) : D;
  const int64_t row_chunk = column_split ? B : std::max<int64_t>(1, 4096 / D);
  const int64_t column_blocks = ffv::ceil_div(D, block), row_chunks = ffv::ceil_div(B, row_chunk);
  const int64_t units_per_group = column_blocks * row_chunks;
  bool out_of_range = false;
  FFV_OMP(parallel for if(parallel) schedule(static) reduction(||: out_of_range))
  for (int64_t unit = 0; unit < G * units_per_group; ++unit) {
    const int64_t g = unit / units_per_group, within = unit % units_per_group;
    const int64_t i0 = (within / column_blocks) * row_chunk, i1 = std::min(B, i0 + row_chunk);
    const int64_t d0 = (within % column_blocks) * block, d1 = std::min(D, d0 + block);
    for (int64_t i = i0; i < i1; ++i) {
      const int32_t* index_row = index + (g * B + i) * D;
      for (int64_t d = d0; d < d1; ++d) {
        const int32_t src = index_row[d];
        if (src < 0 || src >= B) {
          out_of_range = true;
          continue;
        }
        grad_z[(g * B + src) * D + d] = grad_out[g * s0 + i * s1 + d * s2];
      }
    }
  }
  return out_of_range ? out_of_range_error() : FFV_OK;
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
  FFV_CHECK(ffv::check_int32_rows(entry, B));
  return ffv::check_numel(entry, G, B, D);
}

}  // namespace

extern "C" {

FFV_API ffv_status ffv_permute_dims_forward(ffv_dtype dtype, int64_t G, int64_t B, int64_t D, const void* z,
                                            int64_t z_s0, int64_t z_s1, int64_t z_s2, const int64_t* seed,
                                            void* out, int32_t* index, void* /*workspace*/,
                                            int64_t /*workspace_bytes*/, void* /*stream*/) {
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
  return ffv::guarded(entry, [&] {
    return with_element_bits(entry, dtype, [&](auto bits) {
      return backward<decltype(bits)>(G, B, D, grad_out, grad_out_s0, grad_out_s1, grad_out_s2, index, grad_z);
    });
  });
}

// No workspace on the CPU: the query exists because both libraries export the same ABI
// (fastfvae.h); the forward ignores its workspace arguments.
FFV_API ffv_status ffv_permute_dims_workspace_bytes(ffv_dtype /*dtype*/, int64_t /*G*/, int64_t /*B*/, int64_t /*D*/, int64_t* bytes) {
  FFV_CHECK(ffv::check_not_null("ffv_permute_dims_workspace_bytes", "bytes", bytes));
  *bytes = 0;
  return FFV_OK;
}

}  // extern "C"
