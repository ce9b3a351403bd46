// Element types of the native ABI (ffv_dtype) and their conversions to and from the compute
// type: float32 arithmetic for float16 / bfloat16 / float32, float64 for float64. Outputs are
// rounded once, to nearest even, when stored. Header-only, usable from C++ and CUDA (host and
// device); the half conversions are plain bit manipulation so that both sides agree exactly.
#pragma once
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define FFV_DT_HD __host__ __device__ __forceinline__
#else
#define FFV_DT_HD inline
#endif

namespace ffv {

// Storage-only wrappers for the 16-bit types: 16 raw bits, no arithmetic.
struct half_t {
  uint16_t bits;
};
struct bfloat16_t {
  uint16_t bits;
};

FFV_DT_HD uint32_t float_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

FFV_DT_HD float bits_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

// IEEE binary16 -> float32 (exact: every half is a float).
FFV_DT_HD float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1Fu) return bits_float(sign | 0x7F800000u | (mantissa << 13));  // inf / nan
  if (exponent != 0) return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  if (mantissa == 0) return bits_float(sign);  // +-0
  // Subnormal half: value = mantissa * 2^-24, exactly representable as a normal float.
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
  return sign ? -magnitude : magnitude;
}

// float32 -> IEEE binary16, round to nearest even; overflow gives inf, nan stays nan.
FFV_DT_HD uint16_t float_to_half(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t magnitude = u & 0x7FFFFFFFu;
  if (magnitude >= 0x7F800000u) {  // inf or nan (keep nan quiet)
    return static_cast<uint16_t>(sign | 0x7C00u | (magnitude > 0x7F800000u ? 0x200u : 0u));
  }
  if (magnitude >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds to >= 65520: inf
  if (magnitude < 0x38800000u) {
    // Result is subnormal or zero: value / 2^-24 rounded to an integer, nearest even.
    // Adding 0.5 (2^-1) makes the FPU do the rounding: x + 0.5 has its ulp at 2^-24.
    const float shifted = bits_float(magnitude) + 0.5f;
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(float_bits(shifted) - 0x3F000000u));
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits.
  const uint32_t odd = (magnitude >> 13) & 1u;
  const uint32_t rounded = magnitude + 0xC8000FFFu + odd;  // -(112 << 23) + 0xFFF + odd
  return static_cast<uint16_t>(sign | static_cast<uint16_t>(rounded >> 13));
}

FFV_DT_HD float bfloat16_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

// float32 -> bfloat16, round to nearest even; nan stays a quiet nan.
FFV_DT_HD uint16_t float_to_bfloat16(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  const uint32_t odd = (u >> 16) & 1u;
  return static_cast<uint16_t>((u + 0x7FFFu + odd) >> 16);
}

// Per storage type: the compute type and the load/store conversions.
template <typename T>
struct Element;

template <>
struct Element<float> {
  using compute = float;
  static FFV_DT_HD float load(const float* p) { return *p; }
  static FFV_DT_HD void store(float* p, float v) { *p = v; }
};

template <>
struct Element<double> {
  using compute = double;
  static FFV_DT_HD double load(const double* p) { return *p; }
  static FFV_DT_HD void store(double* p, double v) { *p = v; }
};

template <>
struct Element<half_t> {
  using compute = float;
  static FFV_DT_HD float load(const half_t* p) { return half_to_float(p->bits); }
  static FFV_DT_HD void store(half_t* p, float v) { p->bits = float_to_half(v); }
};

template <>
struct Element<bfloat16_t> {
  using compute = float;
  static FFV_DT_HD float load(const bfloat16_t* p) { return bfloat16_to_float(p->bits); }
  static FFV_DT_HD void store(bfloat16_t* p, float v) { p->bits = float_to_bfloat16(v); }
};

}  // namespace ffv
