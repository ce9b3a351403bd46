"""DCI, SAP, modularity/explicitness, the unsupervised scores, the code table and evaluate's
battery on the factors-as-observations data set (tests/_toy_data.py).

Known answers as disentanglement_lib's own tests: hand-computed matrices for the DCI entropies,
the SAP gap and modularity; a code that is the factors scores near the top, a mixed code near the
bottom; a seed reproduces a result exactly. Sizes are small (the defaults run in bench/).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from _toy_data import AlignedEncoder, FactorsDataset, GaussianMixEncoder
from fastfvae.metrics import (
    CodeTable, dci, encode_code_table, evaluate, factor_vae_metric, format_table, mig, modularity_explicitness,
    sap, unsupervised_scores,
)
from fastfvae.metrics import dci as dci_module  # noqa: F401  (the function shadows the module name)
from fastfvae.metrics.dci import completeness, dci_from_codes, disentanglement
from fastfvae.metrics.modularity_explicitness import modularity
from fastfvae.metrics.sap import continuous_score_matrix, top_two_gap
from fastfvae.metrics.unsupervised import gaussian_total_correlation, gaussian_wasserstein_correlation, mutual_info_score

SIZES = (4, 5, 6, 4)
K = len(SIZES)


@pytest.fixture
def dataset():
    return FactorsDataset(SIZES)


class PermutedFactors:
    """Each observation's factor values shuffled among its code dimensions (disentanglement_lib's
    'bad' representation): every code carries every factor a little. Needs factors of one size."""

    def __init__(self, seed=0):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x):
        order = torch.argsort(torch.rand(x.shape, generator=self.generator), dim=1)
        return x.double().gather(1, order)


# ---------------------------------------------------------------- hand-computed matrices


DIAG = np.diag(5.0 * np.ones(5))


@pytest.mark.parametrize("matrix, want_d, want_c", [
    (DIAG, 1.0, 1.0),
    (np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), 1.0, 1.0),        # an empty code weighs nothing
    (np.zeros((10, 10)), 0.0, 0.0),                                      # no importance: uniform weights
    (np.vstack([DIAG, DIAG]), 1.0, 1.0 - math.log(2) / math.log(10)),    # every factor in two codes
    (DIAG[:2], 1.0, 1.0),                                                # factors 2..4 unexplained
    (np.hstack([DIAG, DIAG]), 1.0 - math.log(2) / math.log(10), 1.0),    # every code explains two factors
    # rows [3, 1] and [0, 4]: H_2(3/4, 1/4) = 0.811278..., weights 4/8 each.
    (np.array([[3.0, 1.0], [0.0, 4.0]]), 0.5 * (1 - 0.8112781244591328) + 0.5,
     # columns [3, 0] (weight 3/8, H 0) and [1, 4] (weight 5/8, H_2(1/5, 4/5) = 0.721928...)
     3 / 8 + 5 / 8 * (1 - 0.7219280948873623)),
])
def test_dci_entropies_on_hand_matrices(matrix, want_d, want_c):
    assert disentanglement(matrix) == pytest.approx(want_d, abs=1e-12)
    assert completeness(matrix) == pytest.approx(want_c, abs=1e-12)


def test_dci_single_factor_or_code_is_defined():
    assert disentanglement(np.array([[2.0], [1.0]])) == 1.0
    assert completeness(np.array([[2.0, 1.0]])) == 1.0


@pytest.mark.parametrize("matrix, want", [
    (np.array([[0.9, 0.2], [0.5, 0.7], [0.1, 0.6]]), (0.4 + 0.1) / 2),
    (np.array([[0.3, 0.3, 0.8]]), (0.3 + 0.3 + 0.8) / 3),                # one code: the gap is the score itself
    (np.ones((4, 3)), 0.0),
])
def test_sap_gap_on_hand_matrices(matrix, want):
    assert float(top_two_gap(matrix).mean()) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("matrix, want", [
    (DIAG, 1.0),
    (np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), 2 / 3),             # the empty code scores 0
    (np.zeros((10, 10)), 0.0),
    (np.vstack([DIAG, DIAG]), 1.0),
    (DIAG[:2], 1.0),
    (np.hstack([DIAG, DIAG]), 1.0 - 1.0 / 9),
    # code [1, 2, 2]: m = [1, 4, 4], delta = (9 - 4) / (4 * 2) = 5/8; code [3, 0, 0]: delta 0.
    (np.array([[1.0, 2.0, 2.0], [3.0, 0.0, 0.0]]), (1 - 5 / 8 + 1) / 2),
])
def test_modularity_on_hand_matrices(matrix, want):
    assert modularity(matrix)[0] == pytest.approx(want, abs=1e-12)


def test_gaussian_scores_against_textbook_formulas():
    cov = np.array([[1.0, 0.9, 0.2], [0.9, 2.0, -0.3], [0.2, -0.3, 0.5]])
    diag = np.diag(np.diag(cov))
    # KL(N(0, cov) || N(0, diag)) written out.
    kl = 0.5 * (np.trace(np.linalg.inv(diag) @ cov) - 3 + math.log(np.linalg.det(diag) / np.linalg.det(cov)))
    assert gaussian_total_correlation(torch.tensor(cov)) == pytest.approx(kl, abs=1e-12)
    # disentanglement_lib's definition with scipy's general matrix square root.
    want = 2 * np.trace(cov) - 2 * np.trace(scipy.linalg.sqrtm(cov * np.diag(cov)[:, None])).real
    assert gaussian_wasserstein_correlation(torch.tensor(cov)) == pytest.approx(want, abs=1e-10)
    assert gaussian_total_correlation(torch.eye(4, dtype=torch.float64)) == pytest.approx(0.0, abs=1e-12)
    assert gaussian_wasserstein_correlation(torch.diag(torch.tensor([1.0, 3.0]))) == pytest.approx(0.0, abs=1e-12)
    assert gaussian_total_correlation(torch.ones(2, 2, dtype=torch.float64)) == math.inf   # singular


def test_continuous_sap_matrix_is_squared_correlation():
    gen = np.random.default_rng(0)
    codes = gen.normal(size=(500, 3))
    codes[:, 2] = 4.0                                                     # constant: score 0
    factors = np.stack([codes[:, 0] * 2 + gen.normal(size=500), gen.integers(0, 5, 500)], 1).astype(np.float64)
    got = continuous_score_matrix(codes, factors)
    for d in range(2):
        for k in range(2):
            assert got[d, k] == pytest.approx(np.corrcoef(codes[:, d], factors[:, k])[0, 1] ** 2, abs=1e-12)
    assert (got[2] == 0).all()


def test_mutual_info_score_matches_a_contingency_loop():
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(2000, 1, generator=gen, dtype=torch.float64)
    codes = torch.cat([base, base + 0.3 * torch.randn(2000, 2, generator=gen, dtype=torch.float64)], 1)
    bins = np.stack([np.digitize(c, np.histogram(c, 20)[1][:-1]) for c in codes.numpy().T], 1)

    def mi(a, b):
        total = 0.0
        for x in np.unique(a):
            for y in np.unique(b):
                p = np.mean((a == x) & (b == y))
                if p > 0:
                    total += p * math.log(p / (np.mean(a == x) * np.mean(b == y)))
        return total

    want = np.mean([mi(bins[:, i], bins[:, j]) for i in range(3) for j in range(3) if i != j])
    assert mutual_info_score(codes, 20) == pytest.approx(want, abs=1e-12)


# ---------------------------------------------------------------- known codes, end to end


@pytest.mark.parametrize("estimator", ["batched", "exact", "hist"])
def test_dci_factors_score_high_permuted_low(estimator):
    data = FactorsDataset((5, 5, 5, 5))
    good = dci(lambda x: x.double(), data, num_train=500, num_test=500, estimator=estimator)
    assert good["dci_disentanglement"] > 0.9 and good["dci_completeness"] > 0.9, good
    assert good["dci_informativeness_test"] > 0.99
    bad = dci(PermutedFactors(), data, num_train=500, num_test=500, estimator=estimator)
    assert bad["dci_disentanglement"] < 0.2 and bad["dci_completeness"] < 0.2, bad
    assert len(good["importance_matrix"]) == 4 and len(good["importance_matrix"][0]) == 4
    assert good["estimator"] == estimator and good["num_train"] == 500 and good["seed"] == 0


@pytest.mark.parametrize("estimator", ["batched", "exact"])
def test_dci_duplicated_codes_halve_completeness(estimator):
    # Each code's copy ties with it at every split: both estimators share the importance at random.
    data = FactorsDataset((5, 5, 5, 5))
    out = dci(lambda x: torch.cat([x.double(), x.double()], 1), data, num_train=500, num_test=300,
              estimator=estimator)
    assert out["dci_disentanglement"] > 0.9
    target = 1 - math.log(2) / math.log(8)
    assert abs(out["dci_completeness"] - target) < 0.1, out["dci_completeness"]


def test_sap_factors_high_zeros_and_duplicates_low(dataset):
    for continuous in (False, True):
        good = sap(AlignedEncoder(K, noise_std=0.05), dataset, num_train=600, num_test=600, continuous_factors=continuous)
        # Code d is factor d: it is the best code for its factor by a clear gap. (A linear classifier
        # on one feature only separates the classes at the ends of an ordinal factor, so the
        # discrete accuracies stay well below 1: 0.75 for 4 classes, lower for more.)
        assert np.argmax(np.array(good["score_matrix"]), axis=0).tolist() == list(range(K))
        assert good["sap_score"] > (0.3 if not continuous else 0.9), good
        zeros = sap(lambda x: torch.zeros(x.shape[0], K, dtype=torch.float64), dataset, num_train=600,
                    num_test=600, continuous_factors=continuous)
        assert zeros["sap_score"] < 0.2, zeros
        twice = sap(lambda x: torch.cat([x.double(), x.double()], 1), dataset, num_train=600, num_test=600,
                    continuous_factors=continuous)
        assert twice["sap_score"] < 0.2, twice    # two equally good codes: no gap
    exact = sap(lambda x: x.double(), dataset, num_train=600, num_test=600, continuous_factors=True)
    assert exact["sap_score"] > 0.9


def test_modularity_explicitness_aligned_high_permuted_low():
    data = FactorsDataset((5, 5, 5, 5))
    good = modularity_explicitness(AlignedEncoder(4, noise_std=0.05), data, num_train=1000, num_test=500)
    assert good["modularity_score"] > 0.9 and good["explicitness_score_test"] > 0.9, good
    bad = modularity_explicitness(PermutedFactors(), data, num_train=20000, num_test=500)   # as disentanglement_lib's test
    assert bad["modularity_score"] < 0.2, bad
    twice = modularity_explicitness(lambda x: torch.cat([x.double(), x.double()], 1), data, num_train=1000, num_test=500)
    assert twice["modularity_score"] > 0.9    # a copied code is still modular


def test_unsupervised_independent_codes_score_near_zero(dataset):
    out = unsupervised_scores(AlignedEncoder(K, noise_std=0.05), dataset, num_train=4000)
    assert abs(out["gaussian_total_correlation"]) < 0.01 and out["gaussian_wasserstein_correlation_norm"] < 0.01, out
    mixed = unsupervised_scores(GaussianMixEncoder(SIZES, 6, noise_std=0.1), dataset, num_train=4000)
    assert mixed["gaussian_total_correlation"] > 1.0 and mixed["mutual_info_score"] > out["mutual_info_score"]
    assert out["num_train"] == 4000 and out["constant_dims"] == []


def test_unsupervised_leaves_constant_dims_out(dataset):
    enc = AlignedEncoder(K, noise_std=0.05, constant_dims=2)
    out = unsupervised_scores(enc, dataset, num_train=2000)
    plain = unsupervised_scores(AlignedEncoder(K, noise_std=0.05), dataset, num_train=2000)
    assert out["constant_dims"] == [K, K + 1]
    assert out["gaussian_total_correlation"] == pytest.approx(plain["gaussian_total_correlation"], abs=1e-12)
    assert math.isfinite(out["gaussian_wasserstein_correlation_norm"])


@pytest.mark.parametrize("metric, kwargs", [
    (dci, dict(num_train=300, num_test=200, estimator="batched")),
    (dci, dict(num_train=300, num_test=200, estimator="exact")),
    (dci, dict(num_train=300, num_test=200, estimator="hist")),
    (sap, dict(num_train=300, num_test=200)),
    (modularity_explicitness, dict(num_train=300, num_test=200)),
    (unsupervised_scores, dict(num_train=300)),
])
def test_seed_reproduces_exactly(dataset, metric, kwargs):
    enc = lambda: GaussianMixEncoder(SIZES, 5, noise_std=1.0)  # noqa: E731  (fresh noise stream)
    first = metric(enc(), dataset, seed=5, **kwargs)
    again = metric(enc(), dataset, seed=5, **kwargs)
    other = metric(enc(), dataset, seed=6, **kwargs)
    drop = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert drop(first) == drop(again)
    assert drop(first) != drop(other)
    assert first["seed"] == 5 and first["seconds"] > 0


def test_hist_dci_agrees_with_exact_on_partly_informative_codes(dataset):
    # A full-size comparison runs in bench/test_metrics.py; here a small one that still fails if the
    # hist importances were, e.g., split counts or unnormalised.
    enc = GaussianMixEncoder(SIZES, 6, noise_std=0.5)
    gen = torch.Generator().manual_seed(0)
    factors = dataset.sample_factors(3000, gen)
    codes = enc(dataset.images(factors))
    exact = dci_from_codes(codes[:2000], factors[:2000], codes[2000:], factors[2000:], estimator="exact")
    hist = dci_from_codes(codes[:2000], factors[:2000], codes[2000:], factors[2000:], estimator="hist")
    for key in ("dci_disentanglement", "dci_completeness", "dci_informativeness_test"):
        assert abs(exact[key] - hist[key]) < 0.05, (key, exact[key], hist[key])


# ---------------------------------------------------------------- 14.10: FactorVAE with a constant dimension


def test_factor_vae_threshold_zero_ignores_constant_dimension(dataset):
    # disentanglement_lib's code default: prune_threshold 0.0. A constant dimension's ratio is 0/0;
    # kept as active, its NaN won every argmin and this perfect code scored 1/K.
    out = factor_vae_metric(AlignedEncoder(K, constant_dims=1), dataset, num_train=300, num_eval=200,
                            num_variance_estimate=1000, prune_threshold=0.0)
    assert out["eval_accuracy"] == 1.0 and out["train_accuracy"] == 1.0, out
    assert out["active_dims"] == list(range(K)) and out["prune_threshold"] == 0.0


# ---------------------------------------------------------------- code table


def test_code_table_rows_are_the_grid(dataset):
    enc = GaussianMixEncoder(SIZES, 3, noise_std=0.0)
    table = encode_code_table(enc, dataset, encode_batch_size=77)
    assert table.num_points == math.prod(SIZES) and table.num_dims == 3 and table.logvars is None
    factors = dataset.sample_factors(50, torch.Generator().manual_seed(1))
    torch.testing.assert_close(table.encode(factors), enc(dataset.images(factors)), rtol=0, atol=0)


@pytest.mark.parametrize("name, kwargs", [
    ("factor_vae", dict(num_train=200, num_eval=100, num_variance_estimate=500)),
    ("beta_vae", dict(num_train=200, num_eval=100)),
    ("mig", dict(num_train=1000)),
    ("dci", dict(num_train=300, num_test=200)),
    ("sap", dict(num_train=300, num_test=200)),
    ("modularity_explicitness", dict(num_train=300, num_test=200)),
    ("unsupervised", dict(num_train=500)),
])
def test_every_metric_gives_the_same_result_from_the_table(dataset, name, kwargs):
    enc = GaussianMixEncoder(SIZES, 5, noise_std=0.0)      # a function of the factors, batch-independent
    direct = evaluate(enc, dataset, seed=3, metrics=name, code_table=False, **{name: kwargs})
    tabled = evaluate(enc, dataset, seed=3, metrics=name, code_table=True, **{name: kwargs})
    assert direct["code_table"]["used"] is False and tabled["code_table"]["used"] is True
    a, b = direct[name], tabled[name]
    assert a["codes_from"] == "encoder" and b["codes_from"] == "code_table"
    assert b["num_table_lookups"] == a["num_images_encoded"]
    skip = {"seconds", "cpu_seconds", "codes_from", "num_table_lookups", "num_images_encoded"}
    assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


class CountingEncoder:
    def __init__(self, inner):
        self.inner, self.images = inner, 0

    def __call__(self, x):
        self.images += x.shape[0]
        return self.inner(x)


def test_evaluate_auto_table_only_when_cheaper(dataset):
    enc = CountingEncoder(GaussianMixEncoder(SIZES, 5, noise_std=0.0))
    small = evaluate(enc, dataset, metrics=["mig", "unsupervised"], mig={"num_train": 100}, unsupervised={"num_train": 100})
    assert small["code_table"]["used"] is False and enc.images == 200 == small["protocol_images"]
    enc.images = 0
    big = evaluate(enc, dataset, metrics="factor_vae", factor_vae=dict(num_train=100, num_eval=50, num_variance_estimate=500))
    assert big["code_table"]["used"] is True and "fewer encoder calls" in big["code_table"]["reason"]
    assert enc.images == math.prod(SIZES) < big["protocol_images"] == 500 + 150 * 64


def test_evaluate_all_runs_every_metric_and_reports_parameters(dataset):
    small = dict(factor_vae=dict(num_train=100, num_eval=50, num_variance_estimate=300), beta_vae=dict(num_train=100, num_eval=50),
                 mig=dict(num_train=500), dci=dict(num_train=200, num_test=100), sap=dict(num_train=200, num_test=100),
                 modularity_explicitness=dict(num_train=200, num_test=100), unsupervised=dict(num_train=300))
    out = evaluate(AlignedEncoder(K, noise_std=0.05), dataset, seed=2, preset="fast", **small)
    assert out["metrics"] == ["factor_vae", "beta_vae", "mig", "dci", "sap", "modularity_explicitness", "unsupervised"]
    for name in out["metrics"]:
        assert out[name]["seed"] == 2 and out[name]["seconds"] > 0 and out[name]["cpu_seconds"] > 0, name
    assert out["dci"]["num_train"] == 200 and out["dci"]["estimator"] == "batched"
    assert out["sap"]["num_test"] == 100 and out["unsupervised"]["num_bins"] == 20
    assert out["dci"]["dci_disentanglement"] > 0.8 and out["factor_vae"]["eval_accuracy"] > 0.9
    text = format_table(out)
    assert "dci_disentanglement" in text and "unsupervised" in text and len(text.splitlines()) >= 7


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("metric", [dci, sap, modularity_explicitness, unsupervised_scores])
@pytest.mark.parametrize("bad_encode, error, words", [
    (lambda x: x.double() * float("nan"), ValueError, "encode: returned .* non-finite"),
    (lambda x: x.double()[:, None], ValueError, "encode: expected a 2-D tensor"),
    (lambda x: (x.double(), x.double()), TypeError, "encode: expected a floating torch.Tensor"),
])
def test_bad_encoder_output(dataset, metric, bad_encode, error, words):
    kwargs = dict(num_train=50) if metric is unsupervised_scores else dict(num_train=50, num_test=20)
    with pytest.raises(error, match=words):
        metric(bad_encode, dataset, **kwargs)


@pytest.mark.parametrize("metric", [dci, sap, modularity_explicitness])
def test_fewer_points_than_classes(dataset, metric):
    with pytest.raises(ValueError, match=r"num_train: expected at least 6 points \(the largest factor has 6 classes"):
        metric(lambda x: x.double(), dataset, num_train=5, num_test=5)


def test_factor_with_one_value_is_a_clear_error():
    data = FactorsDataset((3, 1, 4))
    for metric in (dci, sap, modularity_explicitness):
        with pytest.raises(ValueError, match="factor 1 takes a single value"):
            metric(lambda x: x.double(), data, num_train=20, num_test=10)


def test_constant_code():
    data = FactorsDataset((3, 4))
    constant = lambda x: torch.full((x.shape[0], 3), 2.0, dtype=torch.float64)  # noqa: E731
    with pytest.raises(ValueError, match="every one of the 3 code dimensions is constant"):
        unsupervised_scores(constant, data, num_train=100)
    # The supervised metrics have an answer for a code that carries nothing: the bottom, no traceback.
    assert dci(constant, data, num_train=100, num_test=50)["dci_disentanglement"] == 0.0
    assert sap(constant, data, num_train=100, num_test=50)["sap_score"] == 0.0
    me = modularity_explicitness(constant, data, num_train=100, num_test=50)
    assert me["modularity_score"] == 0.0 and me["explicitness_score_test"] == pytest.approx(0.5)


@pytest.mark.parametrize("call, error, words", [
    (lambda d: dci(lambda x: x.double(), d, estimator="xgboost"), ValueError, "estimator: expected one of"),
    (lambda d: dci(lambda x: x.double(), d, n_jobs=0), ValueError, "n_jobs: expected an int >= 1"),
    (lambda d: sap(lambda x: x.double(), d, continuous_factors="yes"), TypeError, "continuous_factors: expected a bool"),
    (lambda d: unsupervised_scores(lambda x: x.double(), d, num_train=1), ValueError, "num_train: expected an int >= 2"),
    (lambda d: modularity_explicitness(lambda x: x.double(), d, num_bins=1), ValueError, "num_bins: expected an int >= 2"),
    (lambda d: evaluate(lambda x: x.double(), d, metrics=[]), ValueError, "metrics: expected 'all'"),
    (lambda d: evaluate(lambda x: x.double(), d, metrics="irs"), ValueError, "metrics: expected one of"),
    (lambda d: evaluate(lambda x: x.double(), d, code_table="yes"), ValueError, "code_table: expected"),
    (lambda d: evaluate(lambda x: x.double(), d, dcl={}), TypeError, "unexpected keyword 'dcl'"),
    (lambda d: evaluate(lambda x: x.double(), d, code_table=CodeTable((2, 2), torch.zeros(4, 1))), ValueError,
     r"code_table: built for factor_sizes \(2, 2\)"),
])
def test_bad_arguments(dataset, call, error, words):
    with pytest.raises(error, match=words):
        call(dataset)
