"""fastfvae.diagnostics on a linear-Gaussian toy where every term of the decomposition is
analytic: x ~ N(0, I_k), encoder mu = A x with a fixed diagonal variance s2, so
q(z) = N(0, S) exactly with S = A A^T + diag(s2), and
    E_x[KL(q(z|x)||p)] = 0.5 (tr(A A^T) + sum s2 - sum log s2 - D)
    KL(q(z)||p)        = 0.5 (tr S - D - log det S)
    I(x; z)            = 0.5 (log det S - sum log s2)
    TC                 = 0.5 (sum_j log S_jj - log det S)
    KL(q(z_j)||p(z_j)) = 0.5 (S_jj - 1 - log S_jj)
The estimates use an N-component mixture for q(z); its bias against the continuous q(z) is
O(e^I / N) ~ 1e-3 nats here, far below the Monte Carlo standard errors the checks use.
"""
from __future__ import annotations

import math

import pytest
import torch

from fastfvae import diagnostics, reference
from conftest import require


class GaussianInputs:
    """A data set of x ~ N(0, I_k): the 'factors' are the draws themselves, images = identity."""

    def __init__(self, k: int):
        self.k = k
        self.factor_sizes = (1,) * k

    def sample_factors(self, n, generator):
        return torch.randn(n, self.k, generator=generator, dtype=torch.float64)

    def images(self, factors):
        return factors


def linear_encoder(a: torch.Tensor, s2: torch.Tensor):
    def encode(x):
        return x @ a.T, torch.log(s2).expand(x.shape[0], -1).clone()
    return encode


def analytic_terms(a: torch.Tensor, s2: torch.Tensor) -> dict:
    dim = a.shape[0]
    cov = a @ a.T + torch.diag(s2)
    logdet = torch.logdet(cov)
    diag = torch.diagonal(cov)
    dimwise = 0.5 * (diag - 1 - diag.log())
    return {
        "expected_kl": float(0.5 * ((a * a).sum() + s2.sum() - s2.log().sum() - dim)),
        "kl_qz_pz": float(0.5 * (torch.trace(cov) - dim - logdet)),
        "mutual_info": float(0.5 * (logdet - s2.log().sum())),
        "total_correlation": float(0.5 * (diag.log().sum() - logdet)),
        "dimwise_kl": float(dimwise.sum()),
        "dimwise_kl_per_dim": dimwise.tolist(),
        "mutual_info_per_dim": (0.5 * (diag.log() - s2.log())).tolist(),
    }


CORRELATED = (torch.tensor([[1.0, 0.6, 0.0], [0.5, 1.2, 0.3], [0.0, -0.7, 0.8]], dtype=torch.float64),
              torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64))
INDEPENDENT = (torch.diag(torch.tensor([1.5, 0.7, 1.0], dtype=torch.float64)),
               torch.tensor([0.4, 0.25, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("toy", [CORRELATED, INDEPENDENT], ids=["correlated", "independent"])
def test_decomposition_matches_the_analytic_linear_gaussian(toy):
    a, s2 = toy
    result = diagnostics.decompose_kl(linear_encoder(a, s2), GaussianInputs(3), num_mixture=4096,
                                      num_samples=2048, batch_size=1000, seed=1)
    want = analytic_terms(a, s2)
    for name in ("expected_kl", "kl_qz_pz", "mutual_info", "total_correlation", "dimwise_kl"):
        se = result[f"{name}_se"]
        assert 0 < se < 0.1, (name, se)
        assert abs(result[name] - want[name]) < 4 * se, (name, result[name], want[name], se)
    for name in ("dimwise_kl_per_dim", "mutual_info_per_dim"):
        for d, (got, exact, se) in enumerate(zip(result[name], want[name], result[f"{name}_se"])):
            assert abs(got - exact) < 4 * se, (name, d, got, exact, se)
    assert abs(result["identity_residual"]) < 4 * result["identity_residual_se"]
    assert result["kl_qz_pz"] == pytest.approx(result["total_correlation"] + result["dimwise_kl"], abs=1e-9)
    if toy is INDEPENDENT:
        assert want["total_correlation"] == pytest.approx(0.0, abs=1e-12)
    else:
        assert want["total_correlation"] > 0.2  # the correlated toy has a TC the test can see
    assert (result["num_mixture"], result["num_samples"], result["latent_dim"]) == (4096, 2048, 3)


def test_backends_agree_and_seed_controls_the_draws(backend):
    require(backend, "log_qz", "cpu", torch.float64)
    a, s2 = CORRELATED
    kwargs = dict(num_mixture=64, num_samples=32, batch_size=20, seed=3)
    got = diagnostics.decompose_kl(linear_encoder(a, s2), GaussianInputs(3), backend=backend, **kwargs)
    ref = diagnostics.decompose_kl(linear_encoder(a, s2), GaussianInputs(3), backend="reference", **kwargs)
    for name in ("mutual_info", "kl_qz_pz", "total_correlation", "dimwise_kl", "identity_residual"):
        assert got[name] == pytest.approx(ref[name], rel=1e-9, abs=1e-9), name
    other = diagnostics.decompose_kl(linear_encoder(a, s2), GaussianInputs(3), backend="reference",
                                     **{**kwargs, "seed": 4})
    assert other["mutual_info"] != ref["mutual_info"]


def test_minibatch_tc_is_the_mws_estimate(backend):
    require(backend, "log_qz", "cpu", torch.float32)
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(16, 4, generator=g), torch.randn(16, 4, generator=g) * 0.3
    z = mu + torch.exp(0.5 * logvar) * torch.randn(16, 4, generator=g)
    got = diagnostics.minibatch_tc(z, mu, logvar, 1000, backend=backend)
    log_qz, log_prod = reference.log_qz(z.double(), mu.double(), logvar.double(), 1000, "mws")
    assert isinstance(got, float)
    assert got == pytest.approx(float((log_qz - log_prod).mean()), rel=1e-5, abs=1e-5)
    assert math.isfinite(got)


@pytest.mark.parametrize("kwargs, words", [
    (dict(num_mixture=10, num_samples=11), ["num_samples", "10", "11"]),
    (dict(num_mixture=0), ["num_mixture", ">= 1"]),
    (dict(batch_size=1.5), ["batch_size", "1.5"]),
])
def test_bad_arguments(kwargs, words):
    a, s2 = CORRELATED
    with pytest.raises(ValueError) as info:
        diagnostics.decompose_kl(linear_encoder(a, s2), GaussianInputs(3), **kwargs)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("where", ["mu", "logvar"])
def test_nan_encoder_raises_as_the_metrics_do(where):
    # A NaN encoder made every estimate NaN without a word; the metrics raise
    # "encode: returned N non-finite values", and so does decompose_kl now.
    a, s2 = CORRELATED
    inner = linear_encoder(a, s2)

    def nan_encoder(x):
        mu, logvar = inner(x)
        if where == "mu":
            mu = mu.clone()
            mu[0, 1] = float("nan")
        else:
            logvar = logvar.clone()
            logvar[-1, 0] = float("inf")
        return mu, logvar

    with pytest.raises(ValueError, match=r"encode_gaussian: returned 1 non-finite values \(NaN or Inf\)"):
        diagnostics.decompose_kl(nan_encoder, GaussianInputs(3), num_mixture=64, num_samples=32, batch_size=20)


def test_code_table_gives_the_same_decomposition():
    from _toy_data import FactorsDataset
    from fastfvae.metrics import encode_code_table

    data = FactorsDataset((4, 5, 3))
    weights = torch.tensor([[0.5, -0.2], [0.1, 0.4], [0.3, 0.3]], dtype=torch.float32)
    calls = []

    def encode_gaussian(x):
        calls.append(x.shape[0])
        mu = (x - 2.0) @ weights
        return mu, (-1.0 + 0.1 * x[:, :2]).contiguous()

    kwargs = dict(num_mixture=300, num_samples=100, batch_size=64, seed=2, backend="reference")
    direct = diagnostics.decompose_kl(encode_gaussian, data, **kwargs)
    table = encode_code_table(encode_gaussian, data, encode_batch_size=25)
    assert table.logvars is not None and table.means.dtype == torch.float32
    calls.clear()
    tabled = diagnostics.decompose_kl(None, data, code_table=table, **kwargs)
    assert calls == []                                    # no encoder pass: every code from the table
    assert tabled == direct
    with pytest.raises(ValueError, match="holds no log-variances"):
        diagnostics.decompose_kl(None, data, code_table=encode_code_table(lambda x: x.double(), data), **kwargs)
