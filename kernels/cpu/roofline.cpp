// Roofline probes (host helpers, CPU library only; bench/roofline.py): the rates the CPU kernels
// are built from, measured with the kernels' own code paths, so that an op's floor (bytes moved
// / bandwidth + numbers drawn / draw rate + arithmetic / arithmetic rate) uses what this machine
// and this library can actually do.
//
// (The draw rates are measured with ffv_philox_fill, kernels/cpu/philox_fill.cpp.)
// fma    x[k] <- x[k] * a + b, `iterations` times per element: one vector FMA per element and
//        iteration (independent chains per register keep the FMA pipes full)
// exp    x[k] <- exp_f32(x[k] * a), `iterations` times: the library's vectorised exp
//        (log_qz's inner loop is made of these and FMAs)
// Every probe splits its n elements over torch's OpenMP team in blocks of kBlock (the team's size is
// what torch.set_num_threads gives; 1 thread measures the per-thread rate).
#include <algorithm>

#include "cpu_common.h"
#include "cpu_math.h"

namespace {

constexpr int64_t kBlock = 4096;  // elements per work unit (16 KB of float32: stays in L1)

// x[0..n) <- x * a + b, iterations times. Written as rounds over 128-element strips so the
// compiler keeps the strip in registers (8 AVX-512 or 16 AVX2 vectors: independent FMA chains,
// enough to cover the FMA latency on two pipes).
FFV_CLONES void fma_block(float* x, int64_t n, int64_t iterations, float a, float b) {
  constexpr int64_t kStrip = 128;
  for (int64_t s = 0; s < n; s += kStrip) {
    float strip[kStrip];
    const int64_t m = std::min(kStrip, n - s);
    for (int64_t k = 0; k < kStrip; ++k) strip[k] = k < m ? x[s + k] : 0.0f;
    for (int64_t it = 0; it < iterations; ++it) {
      for (int64_t k = 0; k < kStrip; ++k) strip[k] = strip[k] * a + b;
    }
    for (int64_t k = 0; k < m; ++k) x[s + k] = strip[k];
  }
}

FFV_CLONES void exp_block(float* x, int64_t n, int64_t iterations, float a) {
  for (int64_t it = 0; it < iterations; ++it) {
    for (int64_t k = 0; k < n; ++k) x[k] = ffv::cpu_math::exp_f32(x[k] * a);
  }
}

template <typename Body>
void over_blocks(int64_t n, Body&& body) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  FFV_OMP(parallel for if(blocks > 1) schedule(static))
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t first = block * kBlock;
    body(first, std::min(kBlock, n - first));
  }
}

}  // namespace

extern "C" {

FFV_API ffv_status ffv_roofline_fma(int64_t n, int64_t iterations, float* x, void* /*stream*/) {
  static const char* entry = "ffv_roofline_fma";
  FFV_CHECK(ffv::check_positive(entry, "n", n));
  FFV_CHECK(ffv::check_positive(entry, "iterations", iterations));
  FFV_CHECK(ffv::check_not_null(entry, "x", x));
  // a slightly below 1 and b small: the values stay bounded and normal for any iteration count.
  over_blocks(n, [&](int64_t first, int64_t m) { fma_block(x + first, m, iterations, 0.999f, 0.001f); });
  return FFV_OK;
}

FFV_API ffv_status ffv_roofline_exp(int64_t n, int64_t iterations, float* x, void* /*stream*/) {
  static const char* entry = "ffv_roofline_exp";
  FFV_CHECK(ffv::check_positive(entry, "n", n));
  FFV_CHECK(ffv::check_positive(entry, "iterations", iterations));
  FFV_CHECK(ffv::check_not_null(entry, "x", x));
  // exp(x * 0.1) of x in [0, 1.2] stays in [1, 1.13]: bounded, never denormal.
  over_blocks(n, [&](int64_t first, int64_t m) { exp_block(x + first, m, iterations, 0.1f); });
  return FFV_OK;
}

}  // extern "C"
