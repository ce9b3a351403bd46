// Philox4x32-10 over many counters at once for the CPU kernels: the first two output words
// (c0, c1) of philox.h's philox_randint4x(seed, first + k*stride), k < n, with AVX-512 or AVX2
// when the CPU has them (chosen once, at first use) and the scalar philox.h otherwise.
//
// Why hand-written: GCC vectorises philox.h's loop with 64-bit lane multiplies (vpmullq) and
// shuffles, about 3x slower than pairing _mm*_mul_epu32 on even and odd lanes as done here.
// Counters are 32-bit here (the caller guarantees first + (n-1)*stride < 2^32, i.e. the high
// counter word is 0, as it is for every tensor under 2^32 elements); bits equal philox.h's.
#pragma once
#include <stdint.h>

#include "philox.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FFV_HAVE_X86_SIMD 1
#endif

namespace ffv {
namespace simd {

constexpr uint32_t kRoundA = 0xD2511F53u, kRoundB = 0xCD9E8D57u;
constexpr uint32_t kKeyA = 0x9E3779B9u, kKeyB = 0xBB67AE85u;

inline void philox_c0c1_scalar(uint64_t seed, uint32_t first, uint32_t stride, int64_t n, uint32_t* c0,
                               uint32_t* c1) {
  for (int64_t k = 0; k < n; ++k) {
    const Philox4 r = philox_randint4x(seed, static_cast<uint64_t>(first + static_cast<uint32_t>(k) * stride));
    c0[k] = r.c0;
    c1[k] = r.c1;
  }
}

#ifdef FFV_HAVE_X86_SIMD
__attribute__((target("avx512f"))) inline void philox_c0c1_avx512(uint64_t seed, uint32_t first, uint32_t stride,
                                                                  int64_t n, uint32_t* c0_out, uint32_t* c1_out) {
  const __m512i round_a = _mm512_set1_epi32(static_cast<int>(kRoundA));
  const __m512i round_b = _mm512_set1_epi32(static_cast<int>(kRoundB));
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i lane_offsets = _mm512_mullo_epi32(lane, _mm512_set1_epi32(static_cast<int>(stride)));
  const __mmask16 odd = 0xAAAA;
  const __mmask8 all = 0xFF;
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(first + static_cast<uint32_t>(k) * stride)),
                                  lane_offsets);
    __m512i c1 = _mm512_setzero_si512(), c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      // 32x32 -> 64-bit products of even lanes, and of odd lanes shifted down. (The maskz forms
      // with an all-ones mask are the plain instructions; GCC 12's unmasked intrinsics trip
      // -Wmaybe-uninitialized on their internal _mm512_undefined_epi32.)
      const __m512i b_even = _mm512_maskz_mul_epu32(all, c2, round_b);
      const __m512i b_odd = _mm512_maskz_mul_epu32(all, _mm512_maskz_srli_epi64(all, c2, 32), round_b);
      const __m512i a_even = _mm512_maskz_mul_epu32(all, c0, round_a);
      const __m512i a_odd = _mm512_maskz_mul_epu32(all, _mm512_maskz_srli_epi64(all, c0, 32), round_a);
      const __m512i hi_b = _mm512_mask_blend_epi32(odd, _mm512_maskz_srli_epi64(all, b_even, 32), b_odd);
      const __m512i lo_b = _mm512_mask_blend_epi32(odd, b_even, _mm512_maskz_slli_epi64(all, b_odd, 32));
      const __m512i hi_a = _mm512_mask_blend_epi32(odd, _mm512_maskz_srli_epi64(all, a_even, 32), a_odd);
      const __m512i lo_a = _mm512_mask_blend_epi32(odd, a_even, _mm512_maskz_slli_epi64(all, a_odd, 32));
      // c0 = hi_b ^ c1 ^ k0; c2 = hi_a ^ c3 ^ k1 (0x96: three-way xor)
      c0 = _mm512_ternarylogic_epi32(hi_b, c1, _mm512_set1_epi32(static_cast<int>(k0)), 0x96);
      c2 = _mm512_ternarylogic_epi32(hi_a, c3, _mm512_set1_epi32(static_cast<int>(k1)), 0x96);
      c1 = lo_b;
      c3 = lo_a;
      k0 += kKeyA;
      k1 += kKeyB;
    }
    _mm512_storeu_si512(c0_out + k, c0);
    _mm512_storeu_si512(c1_out + k, c1);
  }
  philox_c0c1_scalar(seed, first + static_cast<uint32_t>(k) * stride, stride, n - k, c0_out + k, c1_out + k);
}

__attribute__((target("avx2"))) inline void philox_c0c1_avx2(uint64_t seed, uint32_t first, uint32_t stride,
                                                             int64_t n, uint32_t* c0_out, uint32_t* c1_out) {
  const __m256i round_a = _mm256_set1_epi32(static_cast<int>(kRoundA));
  const __m256i round_b = _mm256_set1_epi32(static_cast<int>(kRoundB));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i lane_offsets = _mm256_mullo_epi32(lane, _mm256_set1_epi32(static_cast<int>(stride)));
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(first + static_cast<uint32_t>(k) * stride)),
                                  lane_offsets);
    __m256i c1 = _mm256_setzero_si256(), c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      const __m256i b_even = _mm256_mul_epu32(c2, round_b);
      const __m256i b_odd = _mm256_mul_epu32(_mm256_srli_epi64(c2, 32), round_b);
      const __m256i a_even = _mm256_mul_epu32(c0, round_a);
      const __m256i a_odd = _mm256_mul_epu32(_mm256_srli_epi64(c0, 32), round_a);
      const __m256i hi_b = _mm256_blend_epi32(_mm256_srli_epi64(b_even, 32), b_odd, 0xAA);
      const __m256i lo_b = _mm256_blend_epi32(b_even, _mm256_slli_epi64(b_odd, 32), 0xAA);
      const __m256i hi_a = _mm256_blend_epi32(_mm256_srli_epi64(a_even, 32), a_odd, 0xAA);
      const __m256i lo_a = _mm256_blend_epi32(a_even, _mm256_slli_epi64(a_odd, 32), 0xAA);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi_b, c1), _mm256_set1_epi32(static_cast<int>(k0)));
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi_a, c3), _mm256_set1_epi32(static_cast<int>(k1)));
      c1 = lo_b;
      c3 = lo_a;
      k0 += kKeyA;
      k1 += kKeyB;
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c0_out + k), c0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c1_out + k), c1);
  }
  philox_c0c1_scalar(seed, first + static_cast<uint32_t>(k) * stride, stride, n - k, c0_out + k, c1_out + k);
}
#endif

using PhiloxC0C1 = void (*)(uint64_t, uint32_t, uint32_t, int64_t, uint32_t*, uint32_t*);

// The fastest implementation this CPU runs (decided once).
inline PhiloxC0C1 philox_c0c1_best() {
#ifdef FFV_HAVE_X86_SIMD
  static const PhiloxC0C1 best = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return static_cast<PhiloxC0C1>(philox_c0c1_avx512);
    if (__builtin_cpu_supports("avx2")) return static_cast<PhiloxC0C1>(philox_c0c1_avx2);
    return static_cast<PhiloxC0C1>(philox_c0c1_scalar);
  }();
  return best;
#else
  return philox_c0c1_scalar;
#endif
}

// c0[k], c1[k] = philox_randint4x(seed, first + k*stride) words 0 and 1, for k < n.
inline void philox_c0c1(uint64_t seed, uint64_t first, uint64_t stride, int64_t n, uint32_t* c0, uint32_t* c1) {
  if (n <= 0) return;
  const uint64_t last = first + static_cast<uint64_t>(n - 1) * stride;
  if (last >> 32) {  // counters beyond 32 bits: the scalar path carries into the high word
    for (int64_t k = 0; k < n; ++k) {
      const Philox4 r = philox_randint4x(seed, first + static_cast<uint64_t>(k) * stride);
      c0[k] = r.c0;
      c1[k] = r.c1;
    }
    return;
  }
  philox_c0c1_best()(seed, static_cast<uint32_t>(first), static_cast<uint32_t>(stride), n, c0, c1);
}

}  // namespace simd
}  // namespace ffv
