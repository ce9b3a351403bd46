// boosting_trees on the CPU: grow one boosting stage's least-squares regression trees, many at
// once (host helper of DCI's estimator="batched"; fastfvae/metrics/_boosting.py, DESIGN.md §11).
//
// Every tree t fits residual[t, :] on the same samples x (F features x N samples) as
// scikit-learn's DecisionTreeRegressor(max_depth) with its defaults (squared error, best
// splitter, min_samples_leaf 1): at each node, the split between two consecutive distinct
// values of a feature (closer than 1e-7 counts as equal) that maximises
//     proxy = sum_left^2 / n_left + sum_right^2 / n_right,
// threshold = x_last_left / 2 + x_first_right / 2 (x_last_left when that rounds to the right
// value); samples with x <= threshold go left. A node does not split when it has fewer than 2
// samples, its residual variance sum_sq/n - (sum/n)^2 is <= DBL_EPSILON, or no feature varies.
// Ties: sklearn visits a node's features in a random order and keeps the first maximum, so
// equally good splits on different features (e.g. duplicated codes) share the importance at
// random. Here each (tree, node) ranks its features by a Philox draw,
//     priority[f] = c0 of philox_randint4x(seed, counter_base + (t * (2^max_depth - 1) + heap node) * F + f),
// and a tie goes to the feature of lowest priority, then to its first position.
//
// Nodes are numbered level by level: node n of level d (0 <= n < 2^d) has heap index 2^d - 1 + n
// and children 2n, 2n + 1 at level d + 1; a node that does not split sends every sample to its
// left child (which then cannot split either: same samples). leaf[t, i] is sample i's node at
// level max_depth. importance[t, f] = sum over t's splits on f of (proxy - sum^2/n) / N, the
// squared-error decrease scikit-learn's feature_importances_ adds up.
//
// Sums: the split sums are exact integer sums of the residuals in fixed point (fixed[i] =
// round(residual[i] * 2^fixed_bits)), so two features that split a node into the same sets get
// bit-identical proxies (a tie, settled by the Philox draws) whatever the order of the additions,
// and the torch grower (integer cumsums) makes the same trees. 2^fixed_bits * N < 2^63 with
// |residual| <= 1 (log-loss gradients), fixed_bits = 62 - bit_length(N): finer than float64 sums.
//
// The scan: every feature's presorted order is walked once per level with per-node running sums
// (no sorting per node, unlike sklearn's splitter): O(F N) per tree and level. The test samples
// x_test (F x M) are routed through the finished tree into test_leaf.
#include <cfloat>
#include <cmath>
#include <new>
#include <string>
#include <vector>

#include "cpu_common.h"
#include "philox.h"

namespace {

constexpr double kFeatureThreshold = 1e-7;  // sklearn/tree/_partitioner.pyx FEATURE_THRESHOLD

struct NodeStats {
  double count = 0, sum_sq = 0;  // sum_sq of the float64 residuals (the leaf test's variance)
  int64_t fixed_sum = 0;         // sum of the fixed-point residuals
};

struct BestSplit {
  double proxy = -INFINITY;
  int64_t feature = -1;
  double threshold = 0;
};

// One tree: N samples, F features, depth levels. Outputs at heap index node_base + n.
void grow_tree(int64_t N, int64_t F, int32_t max_depth,
               uint64_t seed, uint64_t counter_base,  // tie-break draws of this tree (see the top)
               const float* x,         // [F, N] feature values
               const int64_t* order,   // [F, N] each row of x's sample indices in ascending order
               const double* residual, // [N] this tree's target
               const int64_t* fixed,   // [N] the same in fixed point, residual * 2^fixed_bits rounded
               double unit,            // 2^-fixed_bits: a fixed-point sum times unit is its value
               int64_t* leaf,          // [N] out: node at level max_depth
               uint8_t* split,         // [2^max_depth - 1] out: node splits
               int64_t* feature,       // [2^max_depth - 1] out: its feature (0 when no split)
               double* threshold,      // [2^max_depth - 1] out: its threshold (0 when no split)
               double* importance,     // [F] out: squared-error decrease per feature, over N
               int64_t M,              // test samples (0: none)
               const float* x_test,    // [F, M] their feature values
               int64_t* test_leaf) {   // [M] out: their node at level max_depth
  std::vector<int64_t> node(static_cast<size_t>(N), 0);
  for (int64_t f = 0; f < F; ++f) importance[f] = 0.0;
  for (int32_t depth = 0; depth < max_depth; ++depth) {
    const int64_t nodes = int64_t{1} << depth, node_base = nodes - 1;
    std::vector<NodeStats> stats(static_cast<size_t>(nodes));
    for (int64_t i = 0; i < N; ++i) {
      NodeStats& s = stats[static_cast<size_t>(node[i])];
      s.count += 1.0;
      s.fixed_sum += fixed[i];
      s.sum_sq += residual[i] * residual[i];
    }
    std::vector<BestSplit> best(static_cast<size_t>(nodes));
    std::vector<int64_t> left_sum(static_cast<size_t>(nodes));
    std::vector<double> left_count(static_cast<size_t>(nodes));
    std::vector<float> last_value(static_cast<size_t>(nodes));
    std::vector<uint32_t> priority(static_cast<size_t>(nodes * F));  // [nodes, F]
    for (int64_t n = 0; n < nodes; ++n)
      for (int64_t f = 0; f < F; ++f)
        priority[static_cast<size_t>(n * F + f)] =
            ffv::philox_randint4x(seed, counter_base + static_cast<uint64_t>((node_base + n) * F + f)).c0;
    for (int64_t f = 0; f < F; ++f) {
      std::fill(left_sum.begin(), left_sum.end(), int64_t{0});
      std::fill(left_count.begin(), left_count.end(), 0.0);
      const int64_t* sorted = order + f * N;
      const float* values = x + f * N;
      for (int64_t p = 0; p < N; ++p) {
        const int64_t i = sorted[p];
        const size_t n = static_cast<size_t>(node[i]);
        const float value = values[i];
        // A split between the node's previous sample (in this feature's order) and sample i.
        if (left_count[n] > 0 && static_cast<double>(value) > static_cast<double>(last_value[n]) + kFeatureThreshold) {
          const double n_left = left_count[n], n_right = stats[n].count - n_left;
          const double s_left = static_cast<double>(left_sum[n]) * unit;
          const double s_right = static_cast<double>(stats[n].fixed_sum - left_sum[n]) * unit;
          const double proxy = s_left * s_left / n_left + s_right * s_right / n_right;
          const bool wins_tie = proxy == best[n].proxy && f != best[n].feature &&
                                priority[n * F + f] < priority[n * F + best[n].feature];
          if (proxy > best[n].proxy || wins_tie) {
            const double low = static_cast<double>(last_value[n]), high = static_cast<double>(value);
            double middle = low / 2.0 + high / 2.0;
            if (middle == high) middle = low;
            best[n] = BestSplit{proxy, f, middle};
          }
        }
        left_sum[n] += fixed[i];
        left_count[n] += 1.0;
        last_value[n] = value;
      }
    }
    std::vector<uint8_t> splits(static_cast<size_t>(nodes));
    for (int64_t n = 0; n < nodes; ++n) {
      const NodeStats& s = stats[static_cast<size_t>(n)];
      const BestSplit& b = best[static_cast<size_t>(n)];
      const double sum = static_cast<double>(s.fixed_sum) * unit;
      const double variance = s.count > 0 ? s.sum_sq / s.count - (sum / s.count) * (sum / s.count) : 0.0;
      const bool splits_here = b.feature >= 0 && s.count >= 2 && variance > DBL_EPSILON;
      splits[static_cast<size_t>(n)] = splits_here;
      split[node_base + n] = splits_here;
      feature[node_base + n] = splits_here ? b.feature : 0;
      threshold[node_base + n] = splits_here ? b.threshold : 0.0;
      if (splits_here) importance[b.feature] += (b.proxy - sum * sum / s.count) / static_cast<double>(N);
    }
    for (int64_t i = 0; i < N; ++i) {
      const int64_t n = node[i];
      const bool right = splits[static_cast<size_t>(n)] &&
                         static_cast<double>(x[feature[node_base + n] * N + i]) > threshold[node_base + n];
      node[i] = 2 * n + (right ? 1 : 0);
    }
  }
  for (int64_t i = 0; i < N; ++i) leaf[i] = node[i];
  for (int64_t j = 0; j < M; ++j) {
    int64_t n = 0;
    for (int32_t depth = 0; depth < max_depth; ++depth) {
      const int64_t heap = (int64_t{1} << depth) - 1 + n;
      n = 2 * n + ((split[heap] && static_cast<double>(x_test[feature[heap] * M + j]) > threshold[heap]) ? 1 : 0);
    }
    test_leaf[j] = n;
  }
}

}  // namespace

extern "C" {

FFV_API ffv_status ffv_boosting_trees_grow(int64_t N, int64_t F, int64_t T, int32_t max_depth, int64_t seed,
                                           int64_t counter_base, const float* x,
                                           const int64_t* order, const double* residual, const int64_t* fixed,
                                           int32_t fixed_bits, int64_t* leaf,
                                           uint8_t* split, int64_t* feature, double* threshold,
                                           double* importance, int64_t M, const float* x_test,
                                           int64_t* test_leaf, void* /*stream*/) {
  static const char* entry = "ffv_boosting_trees_grow";
  FFV_CHECK(ffv::check_positive(entry, "N", N));
  FFV_CHECK(ffv::check_positive(entry, "F", F));
  FFV_CHECK(ffv::check_positive(entry, "T", T));
  if (max_depth < 1 || max_depth > 16)
    return ffv::fail(FFV_ERR_INVALID_ARGUMENT, std::string(entry) + ": max_depth must be in [1, 16], got " +
                                                   std::to_string(max_depth));
  FFV_CHECK(ffv::check_not_null(entry, "x", x));
  FFV_CHECK(ffv::check_not_null(entry, "order", order));
  FFV_CHECK(ffv::check_not_null(entry, "residual", residual));
  FFV_CHECK(ffv::check_not_null(entry, "fixed", fixed));
  if (fixed_bits < 1 || fixed_bits > 62)
    return ffv::fail(FFV_ERR_INVALID_ARGUMENT, std::string(entry) + ": fixed_bits must be in [1, 62], got " +
                                                   std::to_string(fixed_bits));
  FFV_CHECK(ffv::check_not_null(entry, "leaf", leaf));
  FFV_CHECK(ffv::check_not_null(entry, "split", split));
  FFV_CHECK(ffv::check_not_null(entry, "feature", feature));
  FFV_CHECK(ffv::check_not_null(entry, "threshold", threshold));
  FFV_CHECK(ffv::check_not_null(entry, "importance", importance));
  if (M < 0)
    return ffv::fail(FFV_ERR_INVALID_ARGUMENT, std::string(entry) + ": M must be >= 0, got " + std::to_string(M));
  if (M > 0) {
    FFV_CHECK(ffv::check_not_null(entry, "x_test", x_test));
    FFV_CHECK(ffv::check_not_null(entry, "test_leaf", test_leaf));
  }
  const int64_t heap = (int64_t{1} << max_depth) - 1;
  return ffv::guarded(entry, [&] {
    // The trees are independent; each walks F * N samples per level (~0.5 ms for 10 x 10,000).
    // An exception cannot leave an OpenMP region: a tree that fails (out of memory) sets a flag.
    bool failed = false;
    FFV_OMP(parallel for schedule(dynamic))
    for (int64_t t = 0; t < T; ++t) {
      try {
        grow_tree(N, F, max_depth, static_cast<uint64_t>(seed),
                  static_cast<uint64_t>(counter_base) + static_cast<uint64_t>(t * heap * F), x, order, residual + t * N, fixed + t * N,
                  std::ldexp(1.0, -fixed_bits), leaf + t * N, split + t * heap, feature + t * heap,
                  threshold + t * heap, importance + t * F, M, x_test, test_leaf + t * M);
      } catch (...) {
        FFV_OMP(atomic write)
        failed = true;
      }
    }
    if (failed) throw std::bad_alloc();
    return FFV_OK;
  });
}

}  // extern "C"
