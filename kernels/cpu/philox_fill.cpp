// philox_fill (host helper, CPU library only): the Philox numbers the CPU kernels draw, written
// out by themselves.
//
// kind 0 (normal):  out[k] = randn_f32(*seed, k)  -- exactly the eps reparameterize_kl's forward
//                   draws for element k = i*D + d (cpu_math.h's fill_randn_f32, the same code),
//                   so a forward given this tensor as eps computes the same z bit for bit.
// kind 1 (uniform): out[k] = uniform of word c0 of philox(*seed, k) (one Philox call per element,
//                   as each permute_dims sort key needs one).
// Users: the reparameterize_kl op on the CPU, which keeps its eps for the backward instead of
// regenerating it (fastfvae/ops/reparameterize_kl.py says why), and bench/roofline.py's draw
// rates. Blocks of kBlock elements go to torch's OpenMP team; results do not depend on it.
#include <algorithm>

#include "cpu_common.h"
#include "cpu_math.h"
#include "cpu_philox_simd.h"

namespace {

constexpr int64_t kBlock = 4096;  // elements per work unit

FFV_CLONES void normal_block(uint64_t seed, int64_t first, int64_t n, float* out) {
  ffv::cpu_math::fill_randn_f32(seed, static_cast<uint64_t>(first), n, out);
}

FFV_CLONES void uniform_block(uint64_t seed, int64_t first, int64_t n, float* out) {
  uint32_t c0[kBlock], c1[kBlock];
  ffv::simd::philox_c0c1(seed, static_cast<uint64_t>(first), 1, n, c0, c1);
  for (int64_t k = 0; k < n; ++k) out[k] = ffv::uint32_to_uniform(c0[k]);
}

}  // namespace

extern "C" {

FFV_API ffv_status ffv_philox_fill(int32_t kind, const int64_t* seed, int64_t n, float* out, void* /*stream*/) {
  static const char* entry = "ffv_philox_fill";
  FFV_CHECK(ffv::check_positive(entry, "n", n));
  FFV_CHECK(ffv::check_not_null(entry, "seed", seed));
  FFV_CHECK(ffv::check_not_null(entry, "out", out));
  if (kind != 0 && kind != 1)
    return ffv::fail(FFV_ERR_INVALID_ARGUMENT, "ffv_philox_fill: kind must be 0 (normal) or 1 (uniform)");
  const uint64_t key = static_cast<uint64_t>(*seed);
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const bool parallel = n >= ffv::kParallelExpensive;
  (void)parallel;  // unused without OpenMP
  FFV_OMP(parallel for if(parallel && blocks > 1) schedule(static))
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t first = block * kBlock, m = std::min(kBlock, n - first);
    if (kind == 0)
      normal_block(key, first, m, out + first);
    else
      uniform_block(key, first, m, out + first);
  }
  return FFV_OK;
}

}  // extern "C"
