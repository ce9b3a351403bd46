// Philox4x32-10 over many counters at once for the CPU kernels: the first two output words
// (c0, c1) of philox.h's philox_randint4x(seed, first + k*stride), k < n, with AVX-512 or AVX2
// when the CPU has them (chosen once, at first use) and the scalar philox.h otherwise.
//
// Why hand-written: GCC vectorises philox.h's loop with 64-bit lane multiplies (vpmullq) and
// shuffles, about 3x slower than _mm*_mul_epu32 on 64-bit lanes as done here.
// Counters are 32-bit here (the caller guarantees first + (n-1)*stride < 2^32, i.e. the high
// counter word is 0, as it is for every tensor under 2^32 elements); bits equal philox.h's.
#pragma once
#include <stdint.h>
#include <cstdlib>
#include <cstring>

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
// Both SIMD versions keep each 32-bit Philox word in the low half of a 64-bit lane, so that
// _mm*_mul_epu32 (which reads the low halves) gives a round's whole 64-bit product at once: the hi
// word is the product shifted down, and the lo word is the product itself (its high half is never
// read: xor keeps bit positions apart, the next multiply and the final packing read low halves
// only). Against 32-bit lanes (even and odd products, shifts and blends: 16 instructions a round
// for 16 counters), that is 6 instructions for 8 counters, 4 independent vectors in flight.
// Measured for 2^20 counters, one thread, a 2-core AMD EPYC (Zen 4): AVX-512 1.62 -> 1.14 ms,
// AVX2 2.30 -> 1.96 ms (two vectors in flight: four spill its 16 registers), bits unchanged.
__attribute__((target("avx512f"))) inline void philox_c0c1_avx512(uint64_t seed, uint32_t first, uint32_t stride,
                                                                  int64_t n, uint32_t* c0_out, uint32_t* c1_out) {
  constexpr int kVectors = 4;  // 8 counters each
  // (The maskz forms with an all-ones mask are the plain instructions; GCC 12's unmasked
  // intrinsics trip -Wmaybe-uninitialized on their internal _mm512_undefined_epi32.)
  constexpr __mmask8 all = 0xFF;
  const __m512i round_a = _mm512_set1_epi64(kRoundA), round_b = _mm512_set1_epi64(kRoundB);
  const __m512i lane_offsets = _mm512_maskz_mul_epu32(all, _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7), _mm512_set1_epi64(stride));
  int64_t k = 0;
  for (; k + 8 * kVectors <= n; k += 8 * kVectors) {
    const uint32_t base = first + static_cast<uint32_t>(k) * stride;
    __m512i c0[kVectors], c1[kVectors], c2[kVectors], c3[kVectors];
    for (int v = 0; v < kVectors; ++v) {
      c0[v] = _mm512_maskz_add_epi64(all, _mm512_set1_epi64(base + 8u * static_cast<uint32_t>(v) * stride), lane_offsets);
      c1[v] = c2[v] = c3[v] = _mm512_setzero_si512();
    }
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      const __m512i key0 = _mm512_set1_epi64(k0), key1 = _mm512_set1_epi64(k1);
      for (int v = 0; v < kVectors; ++v) {
        const __m512i product_b = _mm512_maskz_mul_epu32(all, c2[v], round_b);  // hi:lo of c2 * B
        const __m512i product_a = _mm512_maskz_mul_epu32(all, c0[v], round_a);  // hi:lo of c0 * A
        // c0 = hi(B c2) ^ c1 ^ k0;  c2 = hi(A c0) ^ c3 ^ k1  (0x96: three-way xor);  c1 = lo(B c2);  c3 = lo(A c0)
        c0[v] = _mm512_maskz_ternarylogic_epi64(all, _mm512_maskz_srli_epi64(all, product_b, 32), c1[v], key0, 0x96);
        c2[v] = _mm512_maskz_ternarylogic_epi64(all, _mm512_maskz_srli_epi64(all, product_a, 32), c3[v], key1, 0x96);
        c1[v] = product_b;
        c3[v] = product_a;
      }
      k0 += kKeyA;
      k1 += kKeyB;
    }
    for (int v = 0; v < kVectors; ++v) {  // the low halves, packed
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c0_out + k + 8 * v), _mm512_maskz_cvtepi64_epi32(all, c0[v]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c1_out + k + 8 * v), _mm512_maskz_cvtepi64_epi32(all, c1[v]));
    }
  }
  philox_c0c1_scalar(seed, first + static_cast<uint32_t>(k) * stride, stride, n - k, c0_out + k, c1_out + k);
}

__attribute__((target("avx2"))) inline void philox_c0c1_avx2(uint64_t seed, uint32_t first, uint32_t stride,
                                                             int64_t n, uint32_t* c0_out, uint32_t* c1_out) {
  constexpr int kVectors = 2;  // 4 counters each
  const __m256i round_a = _mm256_set1_epi64x(kRoundA), round_b = _mm256_set1_epi64x(kRoundB);
  const __m256i lane_offsets = _mm256_mul_epu32(_mm256_setr_epi64x(0, 1, 2, 3), _mm256_set1_epi64x(stride));
  const __m256i low_halves = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
  int64_t k = 0;
  for (; k + 4 * kVectors <= n; k += 4 * kVectors) {
    const uint32_t base = first + static_cast<uint32_t>(k) * stride;
    __m256i c0[kVectors], c1[kVectors], c2[kVectors], c3[kVectors];
    for (int v = 0; v < kVectors; ++v) {
      c0[v] = _mm256_add_epi64(_mm256_set1_epi64x(base + 4u * static_cast<uint32_t>(v) * stride), lane_offsets);
      c1[v] = c2[v] = c3[v] = _mm256_setzero_si256();
    }
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      const __m256i key0 = _mm256_set1_epi64x(k0), key1 = _mm256_set1_epi64x(k1);
      for (int v = 0; v < kVectors; ++v) {
        const __m256i product_b = _mm256_mul_epu32(c2[v], round_b);
        const __m256i product_a = _mm256_mul_epu32(c0[v], round_a);
        c0[v] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(product_b, 32), c1[v]), key0);
        c2[v] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(product_a, 32), c3[v]), key1);
        c1[v] = product_b;
        c3[v] = product_a;
      }
      k0 += kKeyA;
      k1 += kKeyB;
    }
    for (int v = 0; v < kVectors; ++v) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(c0_out + k + 4 * v),
                       _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(c0[v], low_halves)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(c1_out + k + 4 * v),
                       _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(c1[v], low_halves)));
    }
  }
  philox_c0c1_scalar(seed, first + static_cast<uint32_t>(k) * stride, stride, n - k, c0_out + k, c1_out + k);
}
#endif

using PhiloxC0C1 = void (*)(uint64_t, uint32_t, uint32_t, int64_t, uint32_t*, uint32_t*);

// The widest x86 vector extension that the hand-written CPU paths may use (decided once): the
// CPU's, capped by FASTFVAE_CPU_SIMD=avx2 or scalar (never above what the CPU has), so that tests
// on an AVX-512 machine check the other versions' bits too. It governs the intrinsics of this
// file (Philox) and of permute_dims.cpp (its transposes, prefix sum and compare-exchange rounds);
// the compiler's target clones (FFV_CLONES) follow the CPU alone.
enum class SimdLevel { kScalar, kAvx2, kAvx512 };

inline SimdLevel simd_level() {
#ifdef FFV_HAVE_X86_SIMD
  static const SimdLevel level = [] {
    const char* cap = std::getenv("FASTFVAE_CPU_SIMD");
    const bool allow_avx512 = cap == nullptr || std::strcmp(cap, "avx512") == 0;
    const bool allow_avx2 = allow_avx512 || std::strcmp(cap, "avx2") == 0;
    __builtin_cpu_init();
    if (allow_avx512 && __builtin_cpu_supports("avx512f")) return SimdLevel::kAvx512;
    if (allow_avx2 && __builtin_cpu_supports("avx2")) return SimdLevel::kAvx2;
    return SimdLevel::kScalar;
  }();
  return level;
#else
  return SimdLevel::kScalar;
#endif
}

// The fastest Philox implementation simd_level() allows.
inline PhiloxC0C1 philox_c0c1_best() {
#ifdef FFV_HAVE_X86_SIMD
  switch (simd_level()) {
    case SimdLevel::kAvx512: return philox_c0c1_avx512;
    case SimdLevel::kAvx2: return philox_c0c1_avx2;
    case SimdLevel::kScalar: break;
  }
#endif
  return philox_c0c1_scalar;
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
