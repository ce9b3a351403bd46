"""fastfvae.metrics on a data set whose observations are its factors (tests/_toy_data.py).

Known answers: codes that are the (permuted, rescaled, noised) factors score ~1; codes that mix
every factor equally into every dimension score chance; the vectorised metrics agree with naive
per-vote numpy implementations written from the protocol text (disentanglement_lib's loops).
Sizes are reduced except in the tests named *defaults*.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from _toy_data import AlignedEncoder, FactorsDataset, GaussianMixEncoder, MixedEncoder
from fastfvae.metrics import PRESETS, beta_vae_metric, evaluate, factor_vae_metric, mig
from fastfvae.metrics.beta_vae import pair_features, sample_pairs
from fastfvae.metrics.factor_vae import factor_vae_from_samples, sample_votes
from fastfvae.metrics.mig import mig_from_codes

SIZES = (3, 6, 10, 8, 8)
K = len(SIZES)
SMALL_FV = dict(num_train=600, num_eval=400, num_variance_estimate=2000)
SMALL_BV = dict(num_train=400, num_eval=300)
PERM = [2, 0, 4, 1, 3]
SCALE = [0.5, 2.0, 1.3, 3.0, 0.7]


@pytest.fixture
def dataset():
    return FactorsDataset(SIZES)


def aligned(**kwargs):
    return AlignedEncoder(K, perm=PERM, scale=SCALE, noise_std=0.05, **kwargs)


# ---------------------------------------------------------------- known answers


def test_aligned_codes_score_high(dataset):
    fv = factor_vae_metric(aligned(), dataset, **SMALL_FV)
    assert fv["eval_accuracy"] >= 0.99 and fv["train_accuracy"] >= 0.99, fv
    assert fv["num_active_dims"] == K and not fv["all_dims_collapsed"]
    # Dimension d copies factor PERM[d], so the majority vote must map it back.
    assert fv["classifier"] == PERM
    bv = beta_vae_metric(aligned(), dataset, **SMALL_BV)
    assert bv["eval_accuracy"] > 0.95 and bv["train_accuracy"] > 0.95, bv
    m = mig(aligned(), dataset, num_train=5000)
    assert m["score"] > 0.9, m
    assert m["top_dims"] == [PERM.index(k) for k in range(K)]


def test_exact_factors_mig_near_one(dataset):
    # Every factor has <= 20 values, so 20 histogram bins separate them: MI(top dim) = H(factor) and the
    # runner-up only has the small positive bias of a plug-in estimate.
    m = mig(AlignedEncoder(K), dataset)
    assert m["score"] > 0.99, m
    assert all(g > 0.99 for g in m["per_factor"])


def test_equal_weight_mixing_scores_chance():
    data = FactorsDataset((6, 6, 6, 6))
    enc = MixedEncoder(data.factor_sizes, seed=0)
    fv = factor_vae_metric(enc, data, num_train=1000, num_eval=1000, num_variance_estimate=2000)
    bv = beta_vae_metric(enc, data, num_train=600, num_eval=600)
    m = mig(enc, data, num_train=5000)
    # Chance is 0.25; sampling error of 1000 (600) eval votes is ~0.014 (0.018), so 0.35 is > 5 sigma
    # while aligned codes score ~1.
    assert fv["eval_accuracy"] < 0.35, fv
    assert bv["eval_accuracy"] < 0.35, bv
    assert m["score"] < 0.05, m


# ---------------------------------------------------------------- invariances and reproducibility


def _scores(encode, data, seed=0):
    fv = factor_vae_metric(encode, data, seed=seed, **SMALL_FV)
    bv = beta_vae_metric(encode, data, seed=seed, **SMALL_BV)
    m = mig(encode, data, seed=seed, num_train=4000)
    return fv, bv, m


def test_invariant_to_permuting_and_rescaling_dimensions(dataset):
    base = GaussianMixEncoder(SIZES, 6, noise_std=2.0)
    perm = torch.tensor([3, 5, 0, 2, 1, 4])
    scale = torch.tensor([0.3, 4.0, -1.7, 0.9, 2.5, 11.0], dtype=torch.float64)
    fv0, bv0, m0 = _scores(GaussianMixEncoder(SIZES, 6, noise_std=2.0), dataset)
    fv1, bv1, m1 = _scores(lambda x: base(x)[:, perm] * scale, dataset)
    # The codes must be partly informative, or invariance would be trivially true.
    assert 0.4 < fv0["eval_accuracy"] < 0.95 and 0.4 < bv0["eval_accuracy"] < 0.95 and 0.02 < m0["score"] < 0.5
    # FactorVAE votes and MIG bins are functions of ratios and orders that rescaling and permuting
    # leave unchanged: identical scores (the classifier is relabelled by the permutation).
    assert (fv1["train_accuracy"], fv1["eval_accuracy"]) == (fv0["train_accuracy"], fv0["eval_accuracy"])
    assert fv1["classifier"] == [fv0["classifier"][p] for p in perm.tolist()]
    assert m1["score"] == pytest.approx(m0["score"], abs=1e-12)
    # beta-VAE: disentanglement_lib's classifier (scikit-learn LogisticRegression on raw features) is
    # not scale invariant (the L2 penalty is not), but permuting the features permutes the same
    # problem's unique optimum, found to lbfgs tolerance: at most a point on a decision boundary flips.
    fresh = GaussianMixEncoder(SIZES, 6, noise_std=2.0)   # the noise stream of the first call, permuted
    bv2 = _scores(lambda x: fresh(x)[:, perm], dataset)[1]
    assert abs(bv2["train_accuracy"] - bv0["train_accuracy"]) <= 1 / SMALL_BV["num_train"]
    assert abs(bv2["eval_accuracy"] - bv0["eval_accuracy"]) <= 1 / SMALL_BV["num_eval"]
    assert bv1["eval_accuracy"] != bv0["eval_accuracy"]  # the rescaled codes do change it


def test_same_seed_same_scores_and_generator_equivalent(dataset):
    enc = lambda: GaussianMixEncoder(SIZES, 6, noise_std=2.0)  # noqa: E731  (fresh noise stream)
    first = _scores(enc(), dataset, seed=7)
    again = _scores(enc(), dataset, seed=7)
    other = _scores(enc(), dataset, seed=8)
    keys = ("train_accuracy", "eval_accuracy")
    for a, b in zip(first[:2], again[:2]):
        assert [a[k] for k in keys] == [b[k] for k in keys]
    assert first[2]["score"] == again[2]["score"]
    # A different seed draws different votes: the scores move (proves the seed is used).
    assert first[0]["eval_accuracy"] != other[0]["eval_accuracy"]
    assert first[2]["score"] != other[2]["score"]
    via_generator = factor_vae_metric(enc(), dataset, generator=torch.Generator().manual_seed(7), **SMALL_FV)
    assert via_generator["eval_accuracy"] == first[0]["eval_accuracy"] and via_generator["seed"] is None
    assert first[0]["seed"] == 7


def test_collapsed_dimensions_are_pruned_on_std(dataset):
    base = aligned()

    def with_extra_dims(x):
        codes = base(x)
        tiny = 0.001 * x[:, :1].double()           # std 0.0008 < 0.05: pruned
        small = 0.1 * x[:, 1:2].double()           # std 0.17, variance 0.029 < 0.05: kept (threshold is on std)
        constant = torch.full((x.shape[0], 2), 3.0, dtype=torch.float64)
        return torch.cat([codes, tiny, constant, small], dim=1)

    fv = factor_vae_metric(with_extra_dims, dataset, **SMALL_FV)
    assert fv["num_dims"] == K + 4
    assert fv["active_dims"] == [0, 1, 2, 3, 4, K + 3] and fv["num_active_dims"] == K + 1
    assert fv["prune_on"] == "std" and fv["prune_threshold"] == 0.05
    assert fv["eval_accuracy"] >= 0.99


def test_pruned_dimensions_do_not_change_votes(dataset):
    plain = factor_vae_metric(aligned(), dataset, **SMALL_FV)
    base = aligned()
    padded = factor_vae_metric(lambda x: torch.cat([torch.zeros(x.shape[0], 2, dtype=torch.float64), base(x)], 1),
                               dataset, **SMALL_FV)
    assert padded["num_active_dims"] == K and padded["active_dims"] == [2, 3, 4, 5, 6]
    assert (padded["train_accuracy"], padded["eval_accuracy"]) == (plain["train_accuracy"], plain["eval_accuracy"])


def test_all_dimensions_collapsed_scores_zero_without_crashing(dataset):
    zeros = lambda x: torch.zeros(x.shape[0], 4)  # noqa: E731
    fv = factor_vae_metric(zeros, dataset, **SMALL_FV)
    assert fv["all_dims_collapsed"] and fv["num_active_dims"] == 0
    assert fv["train_accuracy"] == 0.0 and fv["eval_accuracy"] == 0.0
    assert fv["num_images_encoded"] == SMALL_FV["num_variance_estimate"]  # no vote was encoded
    assert mig(zeros, dataset, num_train=500)["score"] == 0.0
    bv = beta_vae_metric(zeros, dataset, num_train=50, num_eval=50)
    assert 0.0 <= bv["eval_accuracy"] <= 1.0


# ---------------------------------------------------------------- vectorised == naive per-vote loops


def naive_factor_vae(encode, data, variance_factors, train_votes, eval_votes, threshold):
    """disentanglement_lib's protocol, one vote at a time in numpy (argmin indexes the active subset)."""
    def rep(factors):
        return encode(data.images(factors)).double().numpy()

    global_var = np.var(rep(variance_factors), axis=0, ddof=1)
    active = np.sqrt(global_var) >= threshold
    if not active.any():
        return 0.0, 0.0

    def votes(factor_index, factors):
        table = np.zeros((len(data.factor_sizes), global_var.shape[0]), dtype=np.int64)
        for v in range(factor_index.shape[0]):
            local_var = np.var(rep(factors[v]), axis=0, ddof=1)
            table[int(factor_index[v]), np.argmin(local_var[active] / global_var[active])] += 1
        return table

    train, evals = votes(*train_votes), votes(*eval_votes)
    classifier = np.argmax(train, axis=0)
    cols = np.arange(train.shape[1])
    return train[classifier, cols].sum() / train.sum(), evals[classifier, cols].sum() / evals.sum()


def test_factor_vae_matches_naive_loop_on_mixed_codes(dataset):
    gen = torch.Generator().manual_seed(3)
    variance_factors = dataset.sample_factors(1500, gen)
    train_votes = sample_votes(dataset, SIZES, 300, 64, gen)
    eval_votes = sample_votes(dataset, SIZES, 200, 64, gen)
    # Every vote fixes its factor across its L observations, and only that factor.
    idx, fac = train_votes
    fixed = fac.gather(2, idx[:, None, None].expand(-1, 64, 1)).squeeze(2)
    assert bool((fixed == fixed[:, :1]).all())
    assert bool(((fac.double().std(dim=1) > 0).sum(dim=1) == K - 1).all())
    # No noise here, so the naive loop sees the same codes despite encoding in a different order;
    # a small threshold-crossing dimension exercises pruning in both.
    enc = GaussianMixEncoder(SIZES, 6, noise_std=0.0)
    mixed = lambda x: torch.cat([enc(x), 0.01 * x[:, :1].double()], 1)  # noqa: E731
    fast = factor_vae_from_samples(mixed, dataset, variance_factors, train_votes, eval_votes,
                                   prune_threshold=0.05, encode_batch_size=1000)
    slow = naive_factor_vae(mixed, dataset, variance_factors, train_votes, eval_votes, 0.05)
    assert fast["num_active_dims"] == 6
    assert 0.3 < fast["eval_accuracy"] < 1.0
    assert (fast["train_accuracy"], fast["eval_accuracy"]) == pytest.approx(slow, abs=1e-15)


def naive_mig(codes, factors, num_bins=20):
    """disentanglement_lib's MIG: np.histogram/np.digitize bins, contingency-table MI, per factor."""
    n, d = codes.shape
    binned = np.stack([np.digitize(codes[:, i], np.histogram(codes[:, i], num_bins)[1][:-1]) for i in range(d)], 1)

    def mutual_info(a, b):
        total = 0.0
        for x in np.unique(a):
            for y in np.unique(b):
                p_xy = np.mean((a == x) & (b == y))
                if p_xy > 0:
                    total += p_xy * math.log(p_xy / (np.mean(a == x) * np.mean(b == y)))
        return max(total, 0.0)

    gaps = []
    for k in range(factors.shape[1]):
        h = mutual_info(factors[:, k], factors[:, k])
        m = sorted((mutual_info(binned[:, i], factors[:, k]) for i in range(d)), reverse=True)
        gaps.append((m[0] - m[1]) / h)
    return float(np.mean(gaps))


@pytest.mark.parametrize("kind", ["mixed", "exact_factors"])
def test_mig_matches_naive_loop(dataset, kind):
    gen = torch.Generator().manual_seed(5)
    factors = dataset.sample_factors(3000, gen)
    if kind == "mixed":
        codes = GaussianMixEncoder(SIZES, 6, noise_std=0.5)(dataset.images(factors))
    else:  # integer codes sit exactly on histogram edges: tests the digitize rule, plus a constant dim
        codes = torch.cat([factors.double()[:, PERM], torch.full((3000, 1), 2.0, dtype=torch.float64)], 1)
    fast = mig_from_codes(codes, factors, SIZES, 20)["score"]
    slow = naive_mig(codes.numpy(), factors.numpy())
    assert fast == pytest.approx(slow, abs=1e-12)


def test_mig_normalises_by_the_sample_entropy_of_skewed_factors():
    """Strongly non-uniform factors (each mostly one value): their sample entropy is far below
    log(size), so MIG normalised by log(size) would score well below the right value. Codes that
    copy the factors score 1 exactly (top MI = H, runner-up 0); noised codes match the loop."""
    gen = torch.Generator().manual_seed(8)
    n, sizes = 3000, (3, 6, 10)
    skew = torch.tensor([0.9, 0.8, 0.85])  # probability of value 0 per factor; the rest uniform
    common = torch.rand(n, 3, generator=gen) < skew
    rest = torch.stack([1 + torch.randint(s - 1, (n,), generator=gen) for s in sizes], 1)
    factors = torch.where(common, 0, rest)
    entropies = [float(-(p * p.log()).sum()) for p in
                 (torch.bincount(factors[:, k], minlength=s).double().div(n).clamp_min(1e-300) for k, s in
                  enumerate(sizes))]
    assert all(h < 0.6 * math.log(s) for h, s in zip(entropies, sizes))  # the premise: far from uniform
    codes = torch.cat([factors.double(), torch.zeros(n, 1, dtype=torch.float64)], 1)
    assert mig_from_codes(codes, factors, sizes, 20)["score"] > 0.95
    noised = factors.double() + 0.3 * torch.randn(n, 3, generator=gen, dtype=torch.float64)
    codes = torch.cat([noised, noised[:, :1] + noised[:, 1:2]], 1)
    fast = mig_from_codes(codes, factors, sizes, 20)["score"]
    assert fast == pytest.approx(naive_mig(codes.numpy(), factors.numpy()), abs=1e-12)


def test_beta_vae_features_match_naive_loop(dataset):
    gen = torch.Generator().manual_seed(9)
    idx, f1, f2 = sample_pairs(dataset, SIZES, 40, 16, gen)
    shared = f1.gather(2, idx[:, None, None].expand(-1, 16, 1)) == f2.gather(2, idx[:, None, None].expand(-1, 16, 1))
    assert bool(shared.all())
    enc = GaussianMixEncoder(SIZES, 6, noise_std=0.0)
    fast = pair_features(enc, dataset, f1, f2, encode_batch_size=100)
    slow = np.stack([np.mean(np.abs(enc(dataset.images(f1[p])).numpy() - enc(dataset.images(f2[p])).numpy()), 0)
                     for p in range(40)])
    np.testing.assert_allclose(fast.numpy(), slow, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- defaults, presets, evaluate


def test_factor_vae_and_mig_defaults(dataset):
    fv = factor_vae_metric(aligned(), dataset, encode_batch_size=16384)
    assert (fv["batch_size"], fv["num_train"], fv["num_eval"], fv["num_variance_estimate"], fv["prune_threshold"]) == (
        64, 10000, 5000, 10000, 0.05)
    assert fv["num_images_encoded"] == 10000 + 15000 * 64
    assert fv["eval_accuracy"] >= 0.99
    m = mig(aligned(), dataset)
    assert (m["num_train"], m["num_bins"]) == (10000, 20) and m["score"] > 0.9


@pytest.mark.slow
def test_beta_vae_defaults_through_evaluate(dataset):
    # The default preset of evaluate (the FactorVAE and MIG defaults ran above; beta-VAE's default
    # encodes 1.92 million rows, the longest test here).
    out = evaluate(AlignedEncoder(K, noise_std=0.05), dataset, metrics=("beta_vae",), encode_batch_size=16384)
    assert set(out) == {"beta_vae", "preset", "metrics", "seed", "protocol_images", "code_table", "seconds"}
    # The toy grid (23,040 points) is far smaller than the protocol's 1.92 million images: the table is used.
    assert out["preset"] == "default" and out["code_table"]["used"] is True
    assert out["code_table"]["num_points"] == 3 * 6 * 10 * 8 * 8
    bv = out["beta_vae"]
    assert (bv["batch_size"], bv["num_train"], bv["num_eval"]) == (64, 10000, 5000)
    assert bv["num_table_lookups"] == out["protocol_images"] == 2 * 15000 * 64
    assert bv["eval_accuracy"] > 0.95 and bv["train_accuracy"] > 0.95


def test_evaluate_fast_preset_equals_single_metrics(dataset):
    enc = lambda: GaussianMixEncoder(SIZES, 6, noise_std=0.0)  # noqa: E731  (codes a function of the factors)
    out = evaluate(enc(), dataset, seed=4, preset="fast", metrics=("factor_vae", "mig"), factor_vae={"num_train": 300})
    assert "beta_vae" not in out
    assert out["factor_vae"]["num_train"] == 300 and out["factor_vae"]["num_eval"] == PRESETS["fast"]["factor_vae"]["num_eval"]
    alone = factor_vae_metric(enc(), dataset, seed=4, **{**PRESETS["fast"]["factor_vae"], "num_train": 300})
    assert out["factor_vae"]["eval_accuracy"] == alone["eval_accuracy"]
    # mig was the second metric called with its own generator: the same as calling it alone.
    assert out["mig"]["score"] == mig(enc(), dataset, seed=4, **PRESETS["fast"]["mig"])["score"]
    # Training writes the result into its summary JSON.
    assert json.loads(json.dumps(out))["factor_vae"]["active_dims"] == out["factor_vae"]["active_dims"]


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "bad_encode, error, words",
    [
        (lambda x: (x.double(), x.double()), TypeError, "encode: expected a floating torch.Tensor"),
        (lambda x: x.long(), TypeError, "encode: expected a floating tensor"),
        (lambda x: x.double().sum(1), ValueError, "encode: expected a 2-D tensor"),
        (lambda x: x.double()[None], ValueError, "encode: expected a 2-D tensor"),
        (lambda x: x.double()[:-1], ValueError, "encode: expected 100 rows"),
        (lambda x: x.double()[:, :0], ValueError, "at least one representation dimension"),
        (lambda x: x.double() / 0.0, ValueError, "non-finite"),
    ],
)
def test_bad_encode_output(dataset, bad_encode, error, words):
    with pytest.raises(error, match=words):
        mig(bad_encode, dataset, num_train=100, encode_batch_size=100)


def test_encode_changing_dimension_between_calls(dataset):
    calls = []

    def flaky(x):
        calls.append(1)
        return x.double() if len(calls) == 1 else x.double()[:, :3]

    with pytest.raises(ValueError, match=r"encode: expected 5 dimensions as in its earlier outputs, got shape \(50, 3\)"):
        mig(flaky, dataset, num_train=100, encode_batch_size=50)


class _Broken(FactorsDataset):
    def sample_factors(self, n, generator):
        return super().sample_factors(n, generator) + 10


@pytest.mark.parametrize(
    "data, error, words",
    [
        (FactorsDataset(()), ValueError, "at least one factor"),
        (FactorsDataset((3, 0, 2)), ValueError, "at least one value"),
        (object(), TypeError, "without factor_sizes, sample_factors, images"),
        (_Broken((3, 4)), ValueError, r"dataset.sample_factors: expected factor k in \[0, factor_sizes\[k\]\)"),
    ],
)
def test_bad_dataset(data, error, words):
    for metric in (factor_vae_metric, beta_vae_metric, mig):
        with pytest.raises(error, match=words):
            metric(lambda x: x.double(), data, num_train=10)


@pytest.mark.parametrize(
    "metric, kwargs, error, words",
    [
        (factor_vae_metric, dict(num_train=0), ValueError, "num_train: expected an int >= 1, got 0"),
        (factor_vae_metric, dict(batch_size=1), ValueError, "batch_size: expected an int >= 2, got 1"),
        (factor_vae_metric, dict(num_eval=2.5), TypeError, "num_eval: expected an int"),
        (factor_vae_metric, dict(prune_threshold=-0.1), ValueError, "prune_threshold: expected a float >= 0"),
        (factor_vae_metric, dict(seed=1, generator=torch.Generator()), ValueError, "pass one of them"),
        (beta_vae_metric, dict(num_eval=-3), ValueError, "num_eval: expected an int >= 1"),
        (beta_vae_metric, dict(encode_batch_size=0), ValueError, "encode_batch_size"),
        (mig, dict(num_bins=1), ValueError, "num_bins: expected an int >= 2"),
        (mig, dict(seed="0"), TypeError, "seed: expected an int"),
    ],
)
def test_bad_parameters(dataset, metric, kwargs, error, words):
    with pytest.raises(error, match=words):
        metric(lambda x: x.double(), dataset, **kwargs)


def test_bad_evaluate_arguments(dataset):
    with pytest.raises(ValueError, match="preset: expected one of"):
        evaluate(lambda x: x.double(), dataset, preset="slow")
    with pytest.raises(ValueError, match="metrics: expected one of"):
        evaluate(lambda x: x.double(), dataset, metrics=("irs",))
    with pytest.raises(ValueError, match="pass the seed to evaluate"):
        evaluate(lambda x: x.double(), dataset, mig={"seed": 3})


# ---------------------------------------------------------------- device


class _RecordingDataset(FactorsDataset):
    def __init__(self, sizes):
        super().__init__(sizes)
        self.devices = set()

    def images(self, factors):
        self.devices.add(factors.device)
        return super().images(factors)


def test_data_device_moves_factors_before_images(dataset):
    enc = GaussianMixEncoder(SIZES, 6, noise_std=0.0)
    data = _RecordingDataset(SIZES)
    moved = mig(enc, data, num_train=2000, data_device="cpu")
    assert data.devices == {torch.device("cpu")}
    assert moved["score"] == mig(enc, dataset, num_train=2000)["score"]
    with pytest.raises(ValueError, match="data_device: expected None or a torch device"):
        mig(enc, dataset, num_train=10, data_device="not-a-device")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_encoder_gives_cpu_scores(dataset):
    enc_cpu = GaussianMixEncoder(SIZES, 6, noise_std=0.0)
    enc_gpu = lambda x: enc_cpu(x).cuda()  # noqa: E731
    for metric, kw in ((factor_vae_metric, SMALL_FV), (beta_vae_metric, SMALL_BV), (mig, dict(num_train=3000))):
        cpu, gpu = metric(enc_cpu, dataset, **kw), metric(enc_gpu, dataset, **kw)
        on_gpu = metric(lambda x: enc_cpu(x.cpu()).cuda(), dataset, data_device="cuda", **kw)
        key = "score" if metric is mig else "eval_accuracy"
        for result in (gpu, on_gpu):
            assert result[key] == pytest.approx(cpu[key], abs=1.5 / kw.get("num_eval", 10**9) + 1e-12), metric.__name__
