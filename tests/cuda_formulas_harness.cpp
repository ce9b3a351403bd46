// Host build of kernels/cuda/formulas.h (the per-element device math of the CUDA kernels) for
// tests/test_cuda_host.py, which compiles it with g++ so that the math is checked in CI on
// machines without a GPU. It reads one command per line on stdin and prints the results;
// the test compares them with fastfvae.reference / torch. Commands:
//   perm SEED G B D                   -> two lines: permutation [G, B, D] flattened, from the
//                                        block-sort emulation, then from the fallback emulation
//   bitonic TRIALS SEED               -> "runs mismatches" of the bitonic network vs std::sort
//   randn SEED OFFSET                 -> philox_randn (float32)
//   reparam MU LV EPS GZ G RED B      -> z kl_term gkl grad_mu grad_logvar grad_eps (double line,
//                                        then float line)
//   logits X0 X1                      -> CE0 CE1 dCE0/dx0 dCE0/dx1 dCE1/dx0 dCE1/dx1 BCE(x0,1)
//                                        BCE(x0,0) dBCE(x0,1) dBCE(x0,0) (double line, float line)
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "formulas.h"

using namespace ffv;
using namespace ffv::cuda_math;

// One column (g, d) as permute_dims_block_sort_kernel sorts it: keys in "shared memory"
// padded with kPadKey to a power of two, the pair-indexed bitonic network stage by stage
// (the loop over p stands for the threads), then the gather of the low row bits.
static std::vector<int64_t> block_sort_column(uint64_t seed, int64_t g, int64_t d, int64_t B, int64_t D) {
  const int row_bits = permutation_row_bits(B);
  const int64_t n = next_pow2(B);
  std::vector<int64_t> keys(n);
  for (int64_t i = 0; i < n; ++i) keys[i] = i < B ? column_key(seed, g, i, d, B, D, row_bits) : kPadKey;
  for (int64_t k = 2; k <= n; k <<= 1)
    for (int64_t j = k >> 1; j > 0; j >>= 1)
      for (int64_t p = 0; p < n / 2; ++p) bitonic_compare_exchange(keys.data(), p, j, k);
  const int64_t mask = (int64_t{1} << row_bits) - 1;
  std::vector<int64_t> rows(B);
  for (int64_t i = 0; i < B; ++i) rows[i] = keys[i] & mask;
  return rows;
}

// The fallback path (B > 4096): column-major keys [S = G*D, B], one sort per segment (CUB's
// segmented radix sort on the device), and the same gather mapping as permute_dims.cu.
static std::vector<int64_t> fallback_permutation(uint64_t seed, int64_t G, int64_t B, int64_t D) {
  const int row_bits = permutation_row_bits(B);
  const int64_t S = G * D;
  std::vector<uint64_t> keys(S * B);
  for (int64_t e = 0; e < S * B; ++e) {
    const int64_t s = e / B, i = e - s * B, g = s / D, d = s - g * D;
    keys[e] = static_cast<uint64_t>(column_key(seed, g, i, d, B, D, row_bits));
  }
  for (int64_t s = 0; s < S; ++s) std::sort(keys.begin() + s * B, keys.begin() + (s + 1) * B);
  std::vector<int64_t> out(S * B);
  for (int64_t e = 0; e < S * B; ++e) {
    const int64_t s = e / B, i = e - s * B, g = s / D, d = s - g * D;
    out[(g * B + i) * D + d] = static_cast<int64_t>(keys[e] & ((uint64_t{1} << row_bits) - 1));
  }
  return out;
}

static void print_row(const std::vector<int64_t>& values) {
  for (auto v : values) std::printf("%lld ", static_cast<long long>(v));
  std::printf("\n");
}

// Prints the six reparameterize_kl values computed in Acc (double or float).
template <typename Acc>
static void print_reparam(double mu, double lv, double eps, double gz, double g, int reduction, int64_t B,
                          const char* fmt) {
  const Acc m = Acc(mu), l = Acc(lv), e = Acc(eps), gzz = Acc(gz);
  const Acc z = reparameterize(m, l, e), gkl = kl_row_grad(Acc(g), reduction, B);
  const Acc values[6] = {z, kl_term(m, l), gkl, reparameterize_kl_grad_mu(gzz, gkl, m),
                         reparameterize_kl_grad_logvar(gzz, gkl, l, e), reparameterize_kl_grad_eps(gzz, l)};
  for (Acc v : values) std::printf(fmt, double(v));
  std::printf("\n");
}

// Prints the ten CE/BCE values for the logit row (x0, x1) computed in Acc.
template <typename Acc>
static void print_logits(double x0d, double x1d, const char* fmt) {
  const Acc x0 = Acc(x0d), x1 = Acc(x1d);
  const Acc values[10] = {cross_entropy2(x0, x1, 0),          cross_entropy2(x0, x1, 1),
                          cross_entropy2_grad(x0, x1, 0, 0), cross_entropy2_grad(x0, x1, 0, 1),
                          cross_entropy2_grad(x0, x1, 1, 0), cross_entropy2_grad(x0, x1, 1, 1),
                          bce_with_logits(x0, 1),            bce_with_logits(x0, 0),
                          bce_with_logits_grad(x0, 1),       bce_with_logits_grad(x0, 0)};
  for (Acc v : values) std::printf(fmt, double(v));
  std::printf("\n");
}

int main() {
  char cmd[32];
  while (std::scanf("%31s", cmd) == 1) {
    if (!std::strcmp(cmd, "perm")) {
      unsigned long long seed;
      long long G, B, D;
      if (std::scanf("%llu %lld %lld %lld", &seed, &G, &B, &D) != 4) return 2;
      std::vector<int64_t> block(G * B * D);
      for (int64_t column = 0; column < G * D; ++column) {
        const int64_t g = column / D, d = column - g * D;
        const auto rows = block_sort_column(seed, g, d, B, D);
        for (int64_t i = 0; i < B; ++i) block[(g * B + i) * D + d] = rows[i];
      }
      print_row(block);
      print_row(fallback_permutation(seed, G, B, D));
    } else if (!std::strcmp(cmd, "bitonic")) {
      // Random arrays of every power-of-two size 1..8192; odd trials draw 4-bit values, so
      // they are full of duplicates.
      int trials;
      unsigned long long seed;
      if (std::scanf("%d %llu", &trials, &seed) != 2) return 2;
      std::mt19937_64 rng(seed);
      int bad = 0, runs = 0;
      for (int64_t n = 1; n <= 8192; n <<= 1)
        for (int t = 0; t < trials; ++t) {
          std::vector<int64_t> a(n);
          for (auto& v : a) v = static_cast<int64_t>(rng() >> (t % 2 ? 60 : 1));
          std::vector<int64_t> expect = a;
          std::sort(expect.begin(), expect.end());
          for (int64_t k = 2; k <= n; k <<= 1)
            for (int64_t j = k >> 1; j > 0; j >>= 1)
              for (int64_t p = 0; p < n / 2; ++p) bitonic_compare_exchange(a.data(), p, j, k);
          bad += a != expect;
          ++runs;
        }
      std::printf("%d %d\n", runs, bad);
    } else if (!std::strcmp(cmd, "randn")) {
      unsigned long long seed, offset;
      if (std::scanf("%llu %llu", &seed, &offset) != 2) return 2;
      std::printf("%.9g\n", philox_randn(seed, offset));
    } else if (!std::strcmp(cmd, "reparam")) {
      double mu, lv, eps, gz, g;
      int reduction;
      long long B;
      if (std::scanf("%lf %lf %lf %lf %lf %d %lld", &mu, &lv, &eps, &gz, &g, &reduction, &B) != 7) return 2;
      print_reparam<double>(mu, lv, eps, gz, g, reduction, B, "%.17g ");
      print_reparam<float>(mu, lv, eps, gz, g, reduction, B, "%.9g ");
    } else if (!std::strcmp(cmd, "logits")) {
      double x0, x1;
      if (std::scanf("%lf %lf", &x0, &x1) != 2) return 2;
      print_logits<double>(x0, x1, "%.17g ");
      print_logits<float>(x0, x1, "%.9g ");
    } else {
      std::fprintf(stderr, "unknown command %s\n", cmd);
      return 2;
    }
    std::fflush(stdout);
  }
  return 0;
}
