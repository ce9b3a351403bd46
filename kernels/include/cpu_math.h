// Vectorisable float32 math for the CPU kernels: exp, log, cos and the Philox normal draw.
//
// glibc's expf/logf/cosf are scalar calls, so a loop that uses them never vectorises. These
// branch-free versions (Cephes' polynomials, ~1 ulp) inline into loops that GCC vectorises;
// FFV_CLONES compiles such a loop for x86-64 baseline, AVX2 (v3) and AVX-512 (v4) and picks one
// at load time. randn_f32 is philox.h's philox_randn (Triton's tl.randn) with these functions:
// the same Philox bits, the same Box-Muller formula, results equal to float rounding.
#pragma once
#include <stdint.h>
#include <string.h>

#include <cmath>

#include "cpu_philox_simd.h"
#include "dtype.h"
#include "philox.h"

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) && defined(__linux__)
#define FFV_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define FFV_CLONES
#endif
#define FFV_INLINE inline __attribute__((always_inline))

namespace ffv {
namespace cpu_math {

// Bit casts: dtype.h's bits_float / float_bits.
using ffv::bits_float;
using ffv::float_bits;

// 2^n for integer n in [-126, 127], as a float built from its exponent bits.
FFV_INLINE float pow2i(int32_t n) { return bits_float(static_cast<uint32_t>(n + 127) << 23); }

// e^(x - n ln2) for an integer n that leaves |x - n ln2| <= ln2/2: the Cody-Waite reduction and
// Cephes' expf polynomial (~1 ulp). exp_f32 below and log_qz's exp_lse scale it by 2^n.
FFV_INLINE float exp_reduced_f32(float x, float n) {
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;  // Cody-Waite ln 2
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r * r + r + 1.0f;
}

// e^x; +inf above 88.72, 0 far below -87 (gradual underflow in between), nan stays nan.
FFV_INLINE float exp_f32(float x) {
  // NaN compares false and becomes -104 here (no NaN reaches the int conversion); fixed below.
  const float clamped = x > -104.0f ? (x < 88.8f ? x : 88.8f) : -104.0f;
  const float n = std::nearbyint(clamped * 1.44269504088896341f);
  const float er = exp_reduced_f32(clamped, n);
  // Scale by 2^n in two halves so that neither factor leaves the normal range.
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t half = ni >> 1;
  float result = er * pow2i(half) * pow2i(ni - half);
  result = x > 88.72283905f ? INFINITY : result;
  return x != x ? x : result;
}

// log(x) for positive normal x (the Box-Muller radius needs x in [1e-7, 1)).
FFV_INLINE float log_f32_positive(float x) {
  const uint32_t bits = float_bits(x);
  int32_t e = static_cast<int32_t>(bits >> 23) - 126;       // x = m * 2^e, m in [0.5, 1)
  float m = bits_float((bits & 0x007FFFFFu) | 0x3F000000u);
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1 : e;
  m = small ? m + m - 1.0f : m - 1.0f;                        // m - 1 in [-0.29, 0.41]
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const float ef = static_cast<float>(e);
  y += ef * -2.12194440e-4f;
  y += -0.5f * z;
  return (m + y) + ef * 0.693359375f;
}

// cos(x) for x in [0, 2^13] (Box-Muller's theta is in [0, 2 pi)).
FFV_INLINE float cos_f32_small(float x) {
  int32_t j = static_cast<int32_t>(x * 1.27323954473516f);  // x / (pi/4)
  j += j & 1;                                                // to an even octant
  const float y = static_cast<float>(j);
  j &= 7;
  const float r = ((x - y * 0.78515625f) - y * 2.4187564849853515625e-4f) - y * 3.77489497744594108e-8f;
  const float zz = r * r;
  const float cos_r = ((2.443315711809948e-5f * zz - 1.388731625493765e-3f) * zz + 4.166664568298827e-2f) *
                          zz * zz - 0.5f * zz + 1.0f;
  const float sin_r = ((-1.9515295891e-4f * zz + 8.3321608736e-3f) * zz - 1.6666654611e-1f) * zz * r + r;
  // octant j (even): 0 -> cos r, 2 -> -sin r, 4 -> -cos r, 6 -> sin r
  const float value = (j & 2) ? sin_r : cos_r;
  return ((j + 2) & 4) ? -value : value;
}

// tl.randn(seed, offset) with the functions above (philox.h's philox_randn, vectorisable).
FFV_INLINE float randn_f32(uint64_t seed, uint64_t offset) {
  const Philox4 r = philox_randint4x(seed, offset);
  float u1 = uint32_to_uniform(r.c0);
  const float u2 = uint32_to_uniform(r.c1);
  u1 = u1 > 1.0e-7f ? u1 : 1.0e-7f;
  const float theta = 6.283185307179586f * u2;
  return std::sqrt(-2.0f * log_f32_positive(u1)) * cos_f32_small(theta);
}

// out[k] = randn_f32(seed, first + k) for k < n, in vectorised passes per block: Philox
// (cpu_philox_simd.h), uniforms, then Box-Muller. (Fused in one loop, GCC gives up on it.)
FFV_INLINE void fill_randn_f32(uint64_t seed, uint64_t first, int64_t n, float* out) {
  constexpr int64_t kBlock = 256;
  uint32_t c0[kBlock], c1[kBlock];
  float u1s[kBlock], u2s[kBlock];
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t m = n - b < kBlock ? n - b : kBlock;
    simd::philox_c0c1(seed, first + static_cast<uint64_t>(b), 1, m, c0, c1);
    for (int64_t k = 0; k < m; ++k) {
      const float u1 = uint32_to_uniform(c0[k]);
      u1s[k] = u1 > 1.0e-7f ? u1 : 1.0e-7f;
      u2s[k] = uint32_to_uniform(c1[k]);
    }
    for (int64_t k = 0; k < m; ++k) {
      out[b + k] = std::sqrt(-2.0f * log_f32_positive(u1s[k])) * cos_f32_small(6.283185307179586f * u2s[k]);
    }
  }
}

// exp in the compute type: the vectorisable float version, libm for double.
FFV_INLINE float exp_c(float x) { return exp_f32(x); }
FFV_INLINE double exp_c(double x) { return std::exp(x); }

}  // namespace cpu_math
}  // namespace ffv
