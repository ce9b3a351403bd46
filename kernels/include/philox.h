// Philox4x32-10, bit-identical to Triton's tl.randint4x (triton/language/random.py) and to
// fastfvae/reference/philox.py (philox_randint4x, philox_permutation); philox_randn is tl.randn's
// Box-Muller: bit-identical to it on the GPU, equal to float rounding on the host.
// Header-only, usable from C++ and CUDA (host and device).
#pragma once
#include <stdint.h>

#if defined(__CUDACC__)
#define FFV_HD __host__ __device__ __forceinline__
#else
#define FFV_HD inline
#endif

namespace ffv {

struct Philox4 {
  uint32_t c0, c1, c2, c3;
};

FFV_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

// Four uint32 streams for counter `offset` (a global element index) and key `seed`.
FFV_HD Philox4 philox_randint4x(uint64_t seed, uint64_t offset) {
  uint32_t c0 = static_cast<uint32_t>(offset), c1 = static_cast<uint32_t>(offset >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint32_t old_c0 = c0, old_c2 = c2;
    c0 = mulhi32(0xCD9E8D57u, old_c2) ^ c1 ^ k0;
    c2 = mulhi32(0xD2511F53u, old_c0) ^ c3 ^ k1;
    c1 = 0xCD9E8D57u * old_c2;
    c3 = 0xD2511F53u * old_c0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{c0, c1, c2, c3};
}

// Triton's uint_to_uniform_float for 32-bit input: float in [0, 1).
FFV_HD float uint32_to_uniform(uint32_t x) {
  int32_t s = static_cast<int32_t>(x);
  if (s < 0) s = -s - 1;  // never overflows: -INT32_MIN - 1 == INT32_MAX
  return static_cast<float>(s) * 4.6566127342e-10f;
}

// tl.randn(seed, offset): Box-Muller on the first two streams, first output, in float32.
FFV_HD float philox_randn(uint64_t seed, uint64_t offset) {
  const Philox4 r = philox_randint4x(seed, offset);
  float u1 = uint32_to_uniform(r.c0);
  const float u2 = uint32_to_uniform(r.c1);
  u1 = u1 > 1.0e-7f ? u1 : 1.0e-7f;
  const float theta = 6.283185307179586f * u2;
#if defined(__CUDA_ARCH__)
  // Triton 3.6's tl.sqrt is sqrt.approx.ftz.f32 (tl.sqrt_rn is the rounded one) while sqrtf
  // is sqrt.rn.f32: ~1 ulp apart on some draws. The same instruction here keeps the CUDA eps
  // bit-identical to Triton's (logf and cosf are libdevice's in both); bench/gpu_check.sh's
  // review stage compares them bit for bit. The host build (CPU library) keeps the correctly
  // rounded sqrt: CPU and reference eps equal the GPU's to float rounding, not bit for bit.
  float radius;
  asm("sqrt.approx.ftz.f32 %0, %1;" : "=f"(radius) : "f"(-2.0f * logf(u1)));
  return radius * cosf(theta);
#else
  return __builtin_sqrtf(-2.0f * __builtin_logf(u1)) * __builtin_cosf(theta);
#endif
}

// Number of low key bits that hold the row index: max(1, bit_length(B - 1)).
FFV_HD int permutation_row_bits(int64_t B) {
  int bits = 0;
  for (uint64_t v = static_cast<uint64_t>(B - 1); v != 0; v >>= 1) ++bits;
  return bits > 1 ? bits : 1;
}

// 63-bit sort key of row `row` whose element has global index `offset` = (g*B + row)*D + d:
// random high bits ((c0 & 0x7fffffff) << 32 | c1), low `row_bits` bits replaced by the row.
// Keys of one column are distinct; sorting them gives the column's permutation.
FFV_HD int64_t permutation_key(uint64_t seed, uint64_t offset, int64_t row, int row_bits) {
  const Philox4 r = philox_randint4x(seed, offset);
  const uint64_t random = (static_cast<uint64_t>(r.c0 & 0x7FFFFFFFu) << 32) | r.c1;
  const uint64_t row_mask = (uint64_t{1} << row_bits) - 1;
  return static_cast<int64_t>((random & ~row_mask) | static_cast<uint64_t>(row));
}

}  // namespace ffv
