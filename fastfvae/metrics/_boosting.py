"""scikit-learn's ``GradientBoostingClassifier()`` (its defaults) re-implemented in torch, with the
trees of every class of every factor grown together: DCI's ``estimator="batched"``.

Why: DCI fits one boosted classifier per factor on the same codes. scikit-learn grows each of
their trees alone (dSprites: 3 + 6 + 40 + 32 + 32 = 113 trees a stage, 100 stages), one node and
one feature at a time, which costs ~370 CPU-seconds. Here one stage grows all 113 trees level by
level with tensor operations over (features, trees, samples), on the codes' device.

The algorithm is scikit-learn 1.x's, step for step (sklearn/ensemble/_gb.py, sklearn/tree/):

- Labels are encoded as indices into the sorted distinct training values. A factor with C > 2
  classes gets C trees a stage (half multinomial loss, raw predictions initialised to the
  centred log of the clipped class priors); C = 2 gets one tree (half binomial loss, logit of
  the prior of the second class).
- Every stage fits each tree to the negative gradient y - p (p: softmax / sigmoid of the raw
  predictions before the stage) by least squares: depth 3, every split point between two
  consecutive distinct values of a feature in the node (values closer than 1e-7 count as equal,
  sklearn's FEATURE_THRESHOLD), chosen by the largest sum_left^2/n_left + sum_right^2/n_right,
  threshold at the midpoint. A node is a leaf at depth 3, with under 2 samples, with a residual
  variance <= float64 eps, or when no feature varies in it.
- Each leaf's value is one Newton step, mean(y - p) * (C - 1) / C / mean(p (1 - p))
  (no (C - 1)/C factor for the binomial loss; 0 when the denominator is below 1e-150), and the
  raw predictions move by 0.1 times it.
- Feature importance: the squared-error decrease of every split (n_node var_node - n_left
  var_left - n_right var_right, over the root's n), summed over a factor's trees and normalised
  to sum 1 (sklearn averages over the trees that split, then normalises: the same).
- Prediction: argmax of the raw predictions (binomial: raw >= 0 is the second class).

Ties: scikit-learn visits a node's features in a random order and keeps the first best split,
so equally good splits on different features (a duplicated code, say) share the importance at
random. Here every (stage, tree, node) ranks the features by a Philox draw from ``seed`` and a
tie goes to the lowest rank, then to the first position: the same distribution of choices, not
the same draws. Sums are accumulated in another order (float64 either way). So on codes without
ties the trees are scikit-learn's up to rounding-level near-ties (measured: importances equal to
1e-14 for 10+ stages), and tests/test_metrics_boosting.py compares both growers with it.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from fastfvae.reference import philox_randint4x

FEATURE_THRESHOLD = 1e-7                       # sklearn/tree/_partitioner.pyx
LEAF_IMPURITY = torch.finfo(torch.float64).eps  # sklearn/tree/_tree.pyx EPSILON
PROB_CLIP = torch.finfo(torch.float64).eps      # _init_raw_predictions' clip of the priors


@dataclass
class FactorFit:
    """One factor's boosted classifier, as DCI reads it.

    importance: float64 (F,), sums to 1 (all zero when no tree split).
    train_pred / test_pred: int64 (N,) / (M,) predicted labels (the original label values).
    train_raw: float64 (N, trees) raw predictions of the training samples (sklearn's
    decision_function; trees = 1 for a binary factor, else its number of classes).
    """
    importance: torch.Tensor
    train_pred: torch.Tensor
    test_pred: torch.Tensor
    train_raw: torch.Tensor


@dataclass
class _Targets:
    """The trees of one stage, all factors side by side (tree-major: row t is tree t).

    y: float64 (T, N), the 0/1 target of each tree (class c of its factor; binomial: the second class).
    groups: per factor (first tree row, number of trees, number of classes C, classes (C,) int64).
    """
    y: torch.Tensor
    groups: list[tuple[int, int, int, torch.Tensor]]


def _encode_targets(labels: torch.Tensor) -> _Targets:
    """labels: int64 (N, K) factor values -> one-hot training targets for every tree."""
    rows, groups, first = [], [], 0
    for k in range(labels.shape[1]):
        classes, encoded = torch.unique(labels[:, k], sorted=True, return_inverse=True)
        num_classes = classes.numel()
        if num_classes < 2:
            raise ValueError(f"factor {k}: one value among the training points; a classifier needs two")
        trees = 1 if num_classes == 2 else num_classes
        targets = torch.arange(num_classes, device=labels.device) if trees > 1 else encoded.new_tensor([1])
        rows.append((targets[:, None] == encoded[None, :]).double())
        groups.append((first, trees, num_classes, classes))
        first += trees
    return _Targets(torch.cat(rows, dim=0), groups)


def _initial_raw(targets: _Targets) -> torch.Tensor:
    """Raw predictions (T, 1) of the prior (sklearn's DummyClassifier init, linked)."""
    priors = targets.y.mean(dim=1).clamp(PROB_CLIP, 1 - PROB_CLIP)
    raw = torch.empty_like(priors)
    for first, trees, _, _ in targets.groups:
        p = priors[first:first + trees]
        if trees == 1:
            raw[first] = torch.log(p[0] / (1 - p[0]))
        else:
            log_p = torch.log(p)
            raw[first:first + trees] = log_p - log_p.mean()
    return raw[:, None]


def _probabilities(raw: torch.Tensor, targets: _Targets) -> torch.Tensor:
    """p (T, N): softmax over each multinomial factor's trees, sigmoid for a binomial one."""
    prob = torch.empty_like(raw)
    for first, trees, _, _ in targets.groups:
        block = raw[first:first + trees]
        prob[first:first + trees] = torch.sigmoid(block) if trees == 1 else torch.softmax(block, dim=0)
    return prob


@dataclass
class _Level:
    """The splits of one tree level: for every (tree, node) whether it splits, on which feature and where."""
    split: torch.Tensor      # bool (T, nodes)
    feature: torch.Tensor    # int64 (T, nodes)
    threshold: torch.Tensor  # float64 (T, nodes); x <= threshold goes left


def _route(x_t: torch.Tensor, node: torch.Tensor, level: _Level) -> torch.Tensor:
    """Children (T, N) of samples at nodes (T, N); x_t: the samples' features (F, N).
    A node that does not split sends everything to its left child."""
    feature = level.feature.gather(1, node)
    value = x_t.gather(0, feature).double()
    right = level.split.gather(1, node) & (value > level.threshold.gather(1, node))
    return 2 * node + right.long()


class _TreeGrower:
    """Grows one stage's T least-squares trees on the same samples x (N, F) at once, and routes
    the test samples x_test (M, F) through them.

    Native (CPU library): each tree walks every feature's presorted order once a level. Torch
    (any device): per feature the samples are kept in an order (F, T, N) grouped by the tree's node
    and, within a node, sorted by that feature, so every node's split scan is one cumsum.
    """

    def __init__(self, x: torch.Tensor, x_test: torch.Tensor, max_depth: int, native: bool, seed: int):
        self.x_t = x.t().contiguous()                              # float32 (F, N)
        self.x_test_t = x_test.t().contiguous()                    # float32 (F, M)
        self.order = torch.argsort(self.x_t, dim=1, stable=True)   # int64 (F, N): each feature's sort
        self.max_depth = max_depth
        self.native = native
        self.seed = seed
        self.fixed_bits = 62 - x.shape[0].bit_length()   # 2^fixed_bits * N < 2^63 for |residual| <= 1

    def grow(self, residual: torch.Tensor, stage: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fit stage ``stage``'s T trees to residual (T, N) float64.

        Returns (leaf (T, N) int64 leaf index in [0, 2^depth) of each sample, test_leaf (T, M)
        the same for the test samples, importance (T, F) float64 squared-error decrease of each
        tree's splits per feature, over N).
        """
        trees = residual.shape[0]
        counter_base = stage * trees * (2 ** self.max_depth - 1) * self.x_t.shape[0]
        fixed = torch.round(residual * 2.0 ** self.fixed_bits).long()   # exact split sums (module docstring)
        if self.native:
            from fastfvae.backends.native import host_helpers

            leaf, importance, test_leaf = host_helpers.boosting_trees_grow(
                self.x_t, self.order, residual, fixed, self.fixed_bits, self.max_depth, self.x_test_t, self.seed,
                counter_base)
            return leaf, test_leaf, importance
        levels, leaf, importance = self._grow_torch(residual, fixed, counter_base)
        test_leaf = torch.zeros(residual.shape[0], self.x_test_t.shape[1], dtype=torch.long, device=leaf.device)
        for level in levels:
            test_leaf = _route(self.x_test_t, test_leaf, level)
        return leaf, test_leaf, importance

    def _grow_torch(self, residual_t, fixed_t, counter_base: int):
        num_features, n = self.x_t.shape
        trees = residual_t.shape[0]
        perm = self.order[:, None, :].expand(num_features, trees, n)
        node = torch.zeros(trees, n, dtype=torch.long, device=residual_t.device)
        importance = torch.zeros(trees, num_features, dtype=torch.float64, device=residual_t.device)
        levels = []
        for depth in range(self.max_depth):
            level, gain = self._best_splits(residual_t, fixed_t, perm, node, 2 ** depth, counter_base)
            importance.scatter_add_(1, level.feature, torch.where(level.split, gain, 0.0) / n)
            levels.append(level)
            child = _route(self.x_t, node, level)
            if depth + 1 < self.max_depth:
                perm = self._partition(perm, node, child, 2 ** depth)
            node = child
        return levels, node, importance

    def _priorities(self, trees: int, nodes: int, counter_base: int) -> torch.Tensor:
        """Tie-break ranks (F, T, nodes) of this level's nodes: boosting_trees.cpp's Philox draws."""
        num_features = self.x_t.shape[0]
        heap = 2 ** self.max_depth - 1
        t = torch.arange(trees, device=self.x_t.device)[None, :, None]
        node = torch.arange(nodes, device=self.x_t.device)[None, None, :] + (nodes - 1)
        f = torch.arange(num_features, device=self.x_t.device)[:, None, None]
        counters = counter_base + (t * heap + node) * num_features + f
        return philox_randint4x(self.seed, counters)[0]

    def _best_splits(self, residual_t, fixed_t, perm, node, nodes: int, counter_base: int) -> tuple[_Level, torch.Tensor]:
        """Every (tree, node)'s best split at this level, and its squared-error decrease (T, nodes).
        Sums as boosting_trees.cpp: exact fixed-point sums, scaled by unit, in the same formulas."""
        num_features, trees, n = perm.shape
        unit = 2.0 ** -self.fixed_bits
        count = torch.zeros(trees, nodes, dtype=torch.float64, device=node.device).scatter_add_(
            1, node, torch.ones_like(residual_t))
        total_fixed = torch.zeros(trees, nodes, dtype=torch.long, device=node.device).scatter_add_(1, node, fixed_t)
        total = total_fixed.double() * unit
        total_sq = torch.zeros_like(count).scatter_add_(1, node, residual_t * residual_t)
        start = torch.cumsum(count, dim=1) - count            # first position of each node (T, nodes)

        node_of_pos = node.gather(1, perm[0])                  # (T, N): perm is grouped by node
        pos = torch.arange(n, device=node.device, dtype=torch.float64)
        node_start = start.gather(1, node_of_pos)              # (T, N)
        node_count = count.gather(1, node_of_pos)
        node_total_fixed = total_fixed.gather(1, node_of_pos)

        sorted_fixed = fixed_t[None].expand(num_features, trees, n).gather(2, perm)   # (F, T, N)
        cum = torch.cumsum(sorted_fixed, dim=2)
        before_start = torch.where(node_start > 0, cum.gather(2, (node_start - 1).clamp_min(0).long()
                                                               .expand(num_features, trees, n)), 0)
        left_fixed = cum - before_start                        # left = node's positions up to p
        left_sum = left_fixed.double() * unit
        right_sum = (node_total_fixed - left_fixed).double() * unit
        left_n = pos - node_start + 1
        right_n = node_count - left_n

        values = self.x_t[:, None, :].expand(num_features, trees, n).gather(2, perm).double()  # (F, T, N)
        next_values = torch.roll(values, -1, dims=2)
        valid = (right_n >= 1) & (next_values > values + FEATURE_THRESHOLD)
        proxy = left_sum * left_sum / left_n + right_sum * right_sum / right_n.clamp_min(1)
        proxy = torch.where(valid, proxy, -math.inf)

        # Each node's best proxy per feature (F, T, nodes), then over features.
        node_index = node_of_pos[None].expand(num_features, trees, n)
        best_per_feature = torch.full((num_features, trees, nodes), -math.inf, dtype=torch.float64,
                                      device=node.device).scatter_reduce_(2, node_index, proxy, reduce="amax")
        best = best_per_feature.max(dim=0).values                 # (T, nodes)
        # Ties between features: the lowest Philox priority among those reaching the best wins.
        priority = self._priorities(trees, nodes, counter_base)    # (F, T, nodes)
        reaches = (best_per_feature == best[None]) & (best[None] > -math.inf)
        feature = torch.where(reaches, priority, 2 ** 33).argmin(dim=0)   # (T, nodes)
        # Its first position reaching the best.
        proxy_of_winner = proxy.gather(0, feature.gather(1, node_of_pos)[None]).squeeze(0)  # (T, N)
        is_best = (proxy_of_winner == best.gather(1, node_of_pos)) & (proxy_of_winner > -math.inf)
        first_best = torch.where(is_best, torch.arange(n, device=node.device), n)
        best_pos = torch.full((trees, nodes), n, dtype=torch.long, device=node.device)
        best_pos.scatter_reduce_(1, node_of_pos, first_best, reduce="amin")

        found = best_pos < n
        safe_pos = best_pos.clamp_max(n - 1)
        value_at = values.permute(1, 0, 2)                     # (T, F, N) view
        left_value = value_at[torch.arange(trees, device=node.device)[:, None], feature, safe_pos]
        right_value = value_at[torch.arange(trees, device=node.device)[:, None], feature,
                               (safe_pos + 1).clamp_max(n - 1)]
        threshold = left_value / 2.0 + right_value / 2.0
        threshold = torch.where(threshold == right_value, left_value, threshold)

        mean = total / count.clamp_min(1)
        variance = total_sq / count.clamp_min(1) - mean * mean
        split = found & (count >= 2) & (variance > LEAF_IMPURITY)
        gain = best - total * total / count.clamp_min(1)      # proxy minus the parent's sum^2/n
        return (_Level(split, torch.where(split, feature, 0), torch.where(split, threshold, 0.0)),
                torch.where(split, gain, 0.0))

    @staticmethod
    def _partition(perm, node, child, nodes: int) -> torch.Tensor:
        """Stable-partition every feature's order (F, T, N) from node groups into child groups."""
        num_features, trees, n = perm.shape
        child_count = torch.zeros(trees, 2 * nodes, dtype=torch.long, device=node.device).scatter_add_(
            1, child, torch.ones_like(child))
        child_start = torch.cumsum(child_count, dim=1) - child_count
        node_count = child_count.view(trees, nodes, 2).sum(dim=2)
        node_start = torch.cumsum(node_count, dim=1) - node_count

        child_sorted = child[None].expand(num_features, trees, n).gather(2, perm)   # (F, T, N)
        goes_right = child_sorted & 1
        left_before = torch.cumsum(1 - goes_right, dim=2) - (1 - goes_right)       # lefts before p
        parent = child_sorted >> 1
        first = node_start.gather(1, parent[0])[None].expand(num_features, trees, n)
        left_before_node = left_before.gather(2, first.clamp_max(n - 1))
        left_rank = left_before - left_before_node
        pos = torch.arange(n, device=node.device)
        right_rank = pos - first - left_rank
        new_pos = child_start[None].expand(num_features, trees, 2 * nodes).gather(2, child_sorted) + torch.where(
            goes_right.bool(), right_rank, left_rank)
        return torch.empty_like(perm).scatter_(2, new_pos, perm)


def _leaf_values(residual: torch.Tensor, prob: torch.Tensor, leaf: torch.Tensor, targets: _Targets,
                 leaves: int) -> torch.Tensor:
    """Newton step of every leaf (T, leaves): mean(residual) * (C-1)/C / mean(p (1 - p)); all (T, N)."""
    trees = residual.shape[0]
    numerator = torch.zeros(trees, leaves, dtype=torch.float64, device=leaf.device).scatter_add_(1, leaf, residual)
    denominator = torch.zeros_like(numerator).scatter_add_(1, leaf, prob * (1 - prob))
    count = torch.zeros_like(numerator).scatter_add_(1, leaf, torch.ones_like(residual))
    scale = torch.ones(trees, 1, dtype=torch.float64, device=leaf.device)
    for first, num_trees, num_classes, _ in targets.groups:
        if num_trees > 1:
            scale[first:first + num_trees] = (num_classes - 1) / num_classes
    numerator = numerator / count.clamp_min(1) * scale
    denominator = denominator / count.clamp_min(1)
    return torch.where(denominator.abs() < 1e-150, 0.0, numerator / torch.where(denominator == 0, 1.0, denominator))


def _predict(raw: torch.Tensor, targets: _Targets) -> list[torch.Tensor]:
    """Predicted label values of every factor from raw predictions (T, n)."""
    out = []
    for first, trees, _, classes in targets.groups:
        block = raw[first:first + trees]
        index = (block[0] >= 0).long() if trees == 1 else block.argmax(dim=0)
        out.append(classes[index])
    return out


def native_grower_available(device: torch.device) -> bool:
    """Whether trees on ``device`` grow in the CPU library (else as torch operations)."""
    if device.type != "cpu":
        return False
    from fastfvae.backends.native import host_helpers

    return host_helpers.boosting_trees_available() is None


def fit_factors(x_train: torch.Tensor, labels_train: torch.Tensor, x_test: torch.Tensor, *,
                n_estimators: int = 100, learning_rate: float = 0.1, max_depth: int = 3, seed: int = 0,
                grower: str = "auto") -> list[FactorFit]:
    """One gradient-boosted classifier per factor, all grown together (module docstring).

    x_train: float (N, F) codes; labels_train: int (N, K) factor values; x_test: float (M, F).
    seed: in [0, 2^63), the Philox key of the tie-breaks between features (module docstring).
    grower: "native" (the CPU library's; CPU tensors), "torch" (any device) or "auto" (native
    where available). Returns K FactorFit (importances, train and test predictions), on x_train's device.
    """
    if grower not in ("auto", "native", "torch"):
        raise ValueError(f"grower: expected 'auto', 'native' or 'torch', got {grower!r}")
    use_native = native_grower_available(x_train.device) if grower == "auto" else grower == "native"
    if grower == "auto" and x_train.device.type == "cpu" and not use_native:
        from fastfvae.backends.native import host_helpers

        warnings.warn(f"DCI estimator='batched': {host_helpers.boosting_trees_available()}; growing the trees as "
                      "torch operations instead (the same trees, ~20x slower on a CPU)", RuntimeWarning, stacklevel=3)
    if use_native and x_train.device.type != "cpu":
        raise ValueError(f"grower='native' runs on CPU tensors, got x_train on {x_train.device}")
    x_train = x_train.float()
    x_test = x_test.to(device=x_train.device, dtype=torch.float32)
    targets = _encode_targets(labels_train.to(device=x_train.device, dtype=torch.long))
    grower = _TreeGrower(x_train, x_test, max_depth, use_native, seed)
    raw = _initial_raw(targets).expand(-1, x_train.shape[0]).contiguous()      # (T, N)
    raw_test = raw[:, :1].expand(-1, x_test.shape[0]).contiguous()              # (T, M)
    importance = torch.zeros(targets.y.shape[0], x_train.shape[1], dtype=torch.float64, device=x_train.device)
    for stage in range(n_estimators):
        prob = _probabilities(raw, targets)
        residual = targets.y - prob
        leaf, test_leaf, tree_importance = grower.grow(residual, stage)
        importance += tree_importance
        values = _leaf_values(residual, prob, leaf, targets, 2 ** max_depth)
        raw += learning_rate * values.gather(1, leaf)
        raw_test += learning_rate * values.gather(1, test_leaf)

    train_pred, test_pred = _predict(raw, targets), _predict(raw_test, targets)
    fits = []
    for k, (first, trees, _, _) in enumerate(targets.groups):
        total = importance[first:first + trees].sum(dim=0)
        norm = total.sum()
        fits.append(FactorFit(total / norm if norm > 0 else total, train_pred[k], test_pred[k],
                              raw[first:first + trees].t()))
    return fits
