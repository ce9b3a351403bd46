"""log_qz on every backend against the materialised float64 reference, the MSS weights on cases
worked by hand, custom-op checks, bad input and a memory probe (DESIGN.md §13).

Triton cases run in their own process under TRITON_INTERPRET=1 (tests/test_triton_interpret.py
selects every test id containing "triton"); sizes stay small for them.
"""
from __future__ import annotations

import itertools
import math
import subprocess
import sys
import textwrap

import pytest
import torch

import fastfvae
from fastfvae import reference
from fastfvae.reference import compute_dtype
from conftest import FLOAT_DTYPES, TOLERANCES, assert_close, non_contiguous, require

# (M queries, K components, D): square minibatch forms and M != K forms, odd sizes; the larger
# ones cross the native kernel's tiles (512 components, 8 query rows) with remainders.
SHAPES = [(1, 1, 1), (3, 3, 2), (7, 5, 3), (5, 9, 4), (37, 37, 10)]
LARGE_SHAPES = [(41, 300, 10), (300, 300, 7), (41, 900, 10)]


def _inputs(queries, components, dim, dtype, device, seed, logvar_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(components, dim, generator=g)
    logvar = torch.randn(components, dim, generator=g) * logvar_scale
    # Queries drawn from their own component where one exists (as in training), the rest anywhere.
    z = torch.randn(queries, dim, generator=g) * 1.5
    own = min(queries, components)
    z[:own] = mu[:own] + torch.exp(0.5 * logvar[:own]) * torch.randn(own, dim, generator=g)
    return tuple(t.to(device=device, dtype=dtype) for t in (z, mu, logvar))


def _expected(z, mu, logvar, dataset_size, method, grad_joint, grad_dims):
    """Values and gradients of the materialised reference in float64 autograd."""
    z64, mu64, lv64 = (t.detach().double().requires_grad_() for t in (z, mu, logvar))
    joint, dims = reference.log_qz_marginals(z64, mu64, lv64, dataset_size, method)
    torch.autograd.backward((joint, dims), (grad_joint.double(), grad_dims.double()))
    return joint, dims, z64.grad, mu64.grad, lv64.grad


def _methods(queries, components):
    return ["mws", "mss"] if 2 <= components and queries <= components else ["mws"]


def _check_against_reference(backend, device, dtype, shape, seed, logvar_scale=1.0, dataset_size=1000):
    queries, components, dim = shape
    for method in _methods(queries, components):
        z, mu, logvar = (t.requires_grad_() for t in _inputs(*shape, dtype, device, seed, logvar_scale))
        joint, dims = fastfvae.log_qz_marginals(
            z, mu, logvar, dataset_size=dataset_size, method=method, backend=backend
        )
        assert joint.dtype == dims.dtype == compute_dtype(dtype)  # float32 for 16-bit (17.3)
        assert joint.shape == (queries,) and dims.shape == (queries, dim)
        # Seeded like the inputs: with the global generator, the gradients depended on the tests
        # run before, and about 1 draw in 600 put a float32 grad mu entry, a sum of terms that
        # nearly cancel, past the tolerance (1.7e-5 against 1e-5, before and after the one-pass
        # forward alike).
        g = torch.Generator().manual_seed(seed)
        grad_joint = torch.randn(queries, generator=g).to(device, dtype)
        grad_dims = torch.randn(queries, dim, generator=g).to(device, dtype)
        torch.autograd.backward((joint, dims), (grad_joint, grad_dims))
        expected = _expected(z, mu, logvar, dataset_size, method, grad_joint, grad_dims)
        for name, actual, want in zip(
            ("log_qz", "log_qzj", "grad z", "grad mu", "grad logvar"),
            (joint, dims, z.grad, mu.grad, logvar.grad), expected,
        ):
            assert_close(actual, want, dtype, f"{name} {method} {shape}")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(backend, device, dtype, shape):
    require(backend, "log_qz", device, dtype)
    _check_against_reference(backend, device, dtype, shape, seed=sum(shape))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", LARGE_SHAPES, ids=str)
def test_matches_reference_across_tiles(backend, device, dtype, shape):
    if backend == "triton" and device == "cpu":
        pytest.skip("too large for the Triton interpreter: test_triton_small_tiles covers its tiles")
    require(backend, "log_qz", device, dtype)
    _check_against_reference(backend, device, dtype, shape, seed=7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_triton_small_tiles(backend, device, dtype, monkeypatch):
    """Triton with tiles of a few elements, so that small inputs cross query, component and
    dimension-mask boundaries."""
    if backend != "triton":
        pytest.skip("Triton tile sizes")
    require(backend, "log_qz", device, dtype)
    from fastfvae.backends.triton import log_qz as triton_log_qz

    monkeypatch.setattr(triton_log_qz, "TILE_ELEMENTS", 16)
    for shape in [(5, 7, 3), (9, 9, 2), (3, 11, 5)]:
        _check_against_reference(backend, device, dtype, shape, seed=11)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_extreme_logvar(backend, device, dtype):
    """logvar of -20 (std 4.5e-5: every query sits on a spike of its own component) and +10."""
    require(backend, "log_qz", device, dtype)
    shape = (6, 6, 3) if backend == "triton" else (40, 40, 4)
    z, mu, logvar = _inputs(*shape, torch.float64, "cpu", seed=5)
    g = torch.Generator().manual_seed(1)
    logvar = torch.where(torch.rand(logvar.shape, generator=g) < 0.5, -20.0, 10.0).double()
    z[: shape[1]] = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g, dtype=torch.float64)
    z, mu, logvar = (t.to(device=device, dtype=dtype).requires_grad_() for t in (z, mu, logvar))
    for method in ("mws", "mss"):
        joint, dims = fastfvae.log_qz_marginals(z, mu, logvar, dataset_size=100, method=method, backend=backend)
        assert torch.isfinite(joint).all() and torch.isfinite(dims).all()
        grad_joint = torch.rand(shape[0], device=device, dtype=dtype)
        grad_dims = torch.rand(shape[0], shape[2], device=device, dtype=dtype)
        grads = torch.autograd.grad((joint, dims), (z, mu, logvar), (grad_joint, grad_dims))
        expected = _expected(z, mu, logvar, 100, method, grad_joint, grad_dims)
        for name, actual, want in zip(("log_qz", "log_qzj", "grad z", "grad mu", "grad logvar"),
                                      (joint, dims, *grads), expected):
            assert torch.isfinite(actual).all(), name
            # Gradients reach ~1e4 here (1/std); compare relative to the largest one.
            scale = max(1.0, want.abs().max().item())
            assert_close(actual / scale, want / scale, dtype, f"{name} {method}")


def _far_outside_inputs(regime: str, queries: int, seed: int):
    """float64 inputs (M = K = queries, D = 10) whose log-densities lie far outside exp's range,
    where a logsumexp without its max shift gives -inf or +inf:

    "below": z around +15 and mu around -15 (spread 2), variances about 1: every joint
    log-density below -3000 (about -3800 after the logsumexp; exp underflows below -88 in
    float32, -745 in float64), every per-dimension one below -88.
    "above": every logvar -25 (std 3.7e-6) and each query on its own component: the own joint
    log-density about +100 (exp overflows above +88 in float32)."""
    g = torch.Generator().manual_seed(seed)
    dim = 10
    if regime == "below":
        mu = 2 * torch.randn(queries, dim, generator=g, dtype=torch.float64) - 15
        logvar = 0.3 * torch.randn(queries, dim, generator=g, dtype=torch.float64)
        z = 2 * torch.randn(queries, dim, generator=g, dtype=torch.float64) + 15
    else:
        mu = torch.randn(queries, dim, generator=g, dtype=torch.float64)
        logvar = torch.full((queries, dim), -25.0, dtype=torch.float64)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(queries, dim, generator=g, dtype=torch.float64)
    return z, mu, logvar


@pytest.mark.parametrize("regime, dtype", [("below", torch.float32), ("below", torch.float64),
                                           ("above", torch.float32)], ids=str)
def test_log_densities_far_outside_exp_range(backend, device, regime, dtype):
    """Every joint log-density far below -88 (or the largest far above +88): the streaming
    logsumexp must shift by its running maximum. Forward and backward against float64 autograd
    of the materialised reference, both estimators."""
    require(backend, "log_qz", device, dtype)
    queries = 16 if backend == "triton" and device == "cpu" else 64  # the interpreter is slow
    z, mu, logvar = _far_outside_inputs(regime, queries, seed=3)
    z, mu, logvar = (t.to(dtype) for t in (z, mu, logvar))  # the case as the kernel sees it
    m = reference.gaussian_log_density_matrix(z.double(), mu.double(), logvar.double())  # (M, K, D)
    if regime == "below":  # the premise: no term is within exp's range
        assert float(m.sum(-1).max()) < -800 and float(m.max()) < -88
    else:
        assert float(m.sum(-1).diagonal().min()) > 95
    z, mu, logvar = (t.to(device).requires_grad_() for t in (z, mu, logvar))
    for method in ("mws", "mss"):
        joint, dims = fastfvae.log_qz_marginals(z, mu, logvar, dataset_size=1000, method=method, backend=backend)
        g = torch.Generator().manual_seed(4)
        grad_joint = torch.rand(queries, generator=g, dtype=torch.float64).to(device, dtype)
        grad_dims = torch.rand(queries, 10, generator=g, dtype=torch.float64).to(device, dtype)
        grads = torch.autograd.grad((joint, dims), (z, mu, logvar), (grad_joint, grad_dims))
        expected = _expected(z, mu, logvar, 1000, method, grad_joint, grad_dims)
        # In float32 each log-density of magnitude L (~4e3 here) is rounded by ~L * 2^-24 nats,
        # which moves the backward's softmax weights by as much, relatively (torch's own float32
        # ops, the reference backend, do no better): gradients are held to 4 L 2^-24, values
        # and float64 to the dtype's table.
        conditioning = 4 * float(expected[0].detach().abs().max()) * 2.0**-24 if dtype == torch.float32 else 0.0
        for name, actual, want in zip(("log_qz", "log_qzj", "grad z", "grad mu", "grad logvar"),
                                      (joint, dims, *grads), expected):
            assert torch.isfinite(actual).all(), f"{name} {method}: not finite"
            # Values reach ~4000 (gradients ~3e5 above): compare relative to the largest.
            scale = max(1.0, want.abs().max().item())
            if name.startswith("grad") and conditioning > TOLERANCES[dtype]["rtol"]:
                torch.testing.assert_close((actual / scale).double().cpu(), (want / scale).double().cpu(),
                                           rtol=conditioning, atol=conditioning,
                                           msg=lambda text: f"{name} {method} {regime}: {text}")
            else:
                assert_close(actual / scale, want / scale, dtype, f"{name} {method} {regime}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_one_query_far_away_in_one_dimension(backend, device, dtype):
    """One query hundreds of standard deviations from every component in one dimension (its
    log-density there below -1000), the rest as in training: that (query, dimension) has no term near the largest log-normaliser, so a one-pass
    logsumexp shifted by that bound (the native float forward) must recompute it with its own
    maximum, while every other entry, the same query's other dimensions included, keeps the one
    pass. Forward and backward against float64 autograd of the materialised reference."""
    require(backend, "log_qz", device, dtype)
    shape = (9, 9, 3) if backend == "triton" else (40, 40, 6)
    queries, _, dim = shape
    z, mu, logvar = _inputs(*shape, torch.float64, "cpu", seed=8)
    z[queries // 2, dim - 2] = 300.0
    z, mu, logvar = (t.to(device=device, dtype=dtype).requires_grad_() for t in (z, mu, logvar))
    joint, dims = fastfvae.log_qz_marginals(z, mu, logvar, dataset_size=500, backend=backend)
    g = torch.Generator().manual_seed(2)
    grad_joint = torch.rand(queries, generator=g, dtype=torch.float64).to(device, dtype)
    grad_dims = torch.rand(queries, dim, generator=g, dtype=torch.float64).to(device, dtype)
    grads = torch.autograd.grad((joint, dims), (z, mu, logvar), (grad_joint, grad_dims))
    expected = _expected(z, mu, logvar, 500, "mws", grad_joint, grad_dims)
    assert expected[1][queries // 2, dim - 2].item() < -1000  # the premise: far below exp's range
    for name, actual, want in zip(("log_qz", "log_qzj", "grad z", "grad mu", "grad logvar"),
                                  (joint, dims, *grads), expected):
        assert torch.isfinite(actual).all(), name
        # log q of the far query reaches ~-3e3: compare relative to the largest value.
        scale = max(1.0, want.abs().max().item())
        assert_close(actual / scale, want / scale, dtype, name)
        if name == "log_qzj":  # every other entry at its own scale
            keep = torch.ones_like(want, dtype=torch.bool)
            keep[queries // 2, dim - 2] = False
            assert_close(actual[keep], want[keep], dtype, name)


def test_noncontiguous_inputs_and_expanded_gradients(backend, device):
    require(backend, "log_qz", device, torch.float64)
    z, mu, logvar = _inputs(6, 9, 5, torch.float64, device, seed=2)
    z_nc, mu_nc, lv_nc = (non_contiguous(t).requires_grad_() for t in (z, mu, logvar))
    joint, prod = fastfvae.log_qz(z_nc, mu_nc, lv_nc, dataset_size=50, method="mss", backend=backend)
    # log_prod_qzj = sum_d log_qzj: its gradient reaches the kernel as a stride-0 (M, D) tensor.
    (joint.sum() * 0.3 - prod.sum()).backward()
    z64, mu64, lv64 = (t.detach().clone().requires_grad_() for t in (z, mu, logvar))
    joint_ref, prod_ref = reference.log_qz(z64, mu64, lv64, 50, "mss")
    (joint_ref.sum() * 0.3 - prod_ref.sum()).backward()
    for actual, want in [(joint, joint_ref), (prod, prod_ref), (z_nc.grad, z64.grad), (mu_nc.grad, mu64.grad),
                         (lv_nc.grad, lv64.grad)]:
        assert_close(actual, want, torch.float64, "non-contiguous")


@pytest.mark.parametrize("method", ["mws", "mss"])
def test_gradcheck_float64(backend, device, method):
    require(backend, "log_qz", device, torch.float64)
    z, mu, logvar = (t.requires_grad_() for t in _inputs(4, 5, 3, torch.float64, device, seed=9))

    def fn(z, mu, logvar):
        joint, dims = fastfvae.log_qz_marginals(z, mu, logvar, dataset_size=20, method=method, backend=backend)
        return joint, dims

    assert torch.autograd.gradcheck(fn, (z, mu, logvar))


# ---------------------------------------------------------------------------------------------
# The MSS weights, by hand
# ---------------------------------------------------------------------------------------------
def test_mss_weights_by_hand():
    """B = 3, N = 5: K' = 2 other components; own 1/N = 1/5, partner (N-K')/(N K') = 3/10,
    the rest 1/K' = 1/2; partner of row i is (i + 1) % 3. Each row sums to 1."""
    w = reference.log_qz_weights(3, 3, 5, "mss").exp()
    expected = torch.tensor([[1 / 5, 3 / 10, 1 / 2],
                             [1 / 2, 1 / 5, 3 / 10],
                             [3 / 10, 1 / 2, 1 / 5]], dtype=torch.float64)
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-15)


def test_log_qz_tiny_case_by_hand(backend, device):
    """D = 1, logvar = 0, mu = (0, 1, 2), z = (0, 1, 2): q(z_i|x_j) = phi(z_i - mu_j) with
    phi(0) = 0.398942280, phi(1) = 0.241970725, phi(2) = 0.053990967.
    MSS (N = 5; weights of test_mss_weights_by_hand):
      row 0: 0.2 phi(0) + 0.3 phi(1) + 0.5 phi(2) = 0.179375157 -> log -1.718275819
      row 1: 0.5 phi(1) + 0.2 phi(0) + 0.3 phi(1) = 0.273365036 -> log -1.296947250
      row 2: 0.3 phi(2) + 0.5 phi(1) + 0.2 phi(0) = 0.216971108 -> log -1.527991076
    MWS: log(sum_j phi) - log(N B) = log(sum_j phi) - log 15:
      rows 0, 2: log(0.694903971) - log 15 = -3.072031815; row 1: log(0.882883729) - log 15 = -2.832611965
    With D = 1, log_prod_qzj = log_qz."""
    require(backend, "log_qz", device, torch.float64)
    z = torch.tensor([[0.0], [1.0], [2.0]], dtype=torch.float64, device=device)
    logvar = torch.zeros(3, 1, dtype=torch.float64, device=device)
    mss = torch.tensor([-1.718275819, -1.296947250, -1.527991076], dtype=torch.float64)
    mws = torch.tensor([-3.072031815, -2.832611965, -3.072031815], dtype=torch.float64)
    for method, want in (("mss", mss), ("mws", mws)):
        joint, prod = fastfvae.log_qz(z, z.clone(), logvar, dataset_size=5, method=method, backend=backend)
        torch.testing.assert_close(joint.cpu(), want, rtol=0, atol=2e-9)
        torch.testing.assert_close(prod.cpu(), want, rtol=0, atol=2e-9)


def test_mss_puts_weight_one_over_n_on_the_own_component():
    """Components 100 apart: q(z_i) is the own component's term alone, so every row must give
    log(phi(0) / N). The matrix published with the original code fills column 0 with 1/N instead
    of the diagonal: it would give log(phi(0) / K') for rows >= 2."""
    n = 1000
    mu = torch.tensor([[0.0], [100.0], [200.0], [300.0]], dtype=torch.float64)
    joint, _ = reference.log_qz(mu, mu, torch.zeros_like(mu), n, "mss")
    torch.testing.assert_close(joint, torch.full((4,), math.log(0.3989422804014327 / n), dtype=torch.float64))


def test_mss_is_unbiased_over_all_minibatches():
    """Exact enumeration: for every ordered minibatch of B = 3 distinct points out of N = 5, the
    MSS estimate exp(log_qz[i]) averaged over the batches that put data point n in row i equals
    q(z_n) = (1/N) sum_m q(z_n | x_m), for every row position i."""
    n_data, batch = 5, 3
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(n_data, 2, generator=g, dtype=torch.float64)
    logvar = torch.randn(n_data, 2, generator=g, dtype=torch.float64) * 0.5
    z = mu + torch.exp(0.5 * logvar) * torch.randn(n_data, 2, generator=g, dtype=torch.float64)
    exact = torch.logsumexp(reference.gaussian_log_density_matrix(z, mu, logvar).sum(2), dim=1) - math.log(n_data)
    sums = torch.zeros(batch, n_data, dtype=torch.float64)
    counts = torch.zeros(batch, n_data, dtype=torch.float64)
    for order in itertools.permutations(range(n_data), batch):
        idx = torch.tensor(order)
        joint, _ = reference.log_qz(z[idx], mu[idx], logvar[idx], n_data, "mss")
        for i in range(batch):
            sums[i, order[i]] += joint[i].exp()
            counts[i, order[i]] += 1
    torch.testing.assert_close((sums / counts).log(), exact.expand(batch, n_data), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Custom ops, compile, bad input, memory
# ---------------------------------------------------------------------------------------------
def opcheck_cases(backend):
    """(custom op, arguments) pairs for torch.library.opcheck (tests/test_compile.py runs them for
    every op of fastfvae/registry.py): both methods, forward and backward."""
    g = torch.Generator().manual_seed(0)
    z, mu, logvar = (torch.randn(5, 3, generator=g, requires_grad=True) for _ in range(3))
    ops, cases = torch.ops.fastfvae, []
    for method in ("mws", "mss"):
        cases.append((ops.log_qz.default, (z, mu, logvar, 40, method, backend)))
        joint, dims = reference.log_qz_marginals(z.detach(), mu.detach(), logvar.detach(), 40, method)
        cases.append((ops.log_qz_backward.default,
                      (torch.randn(5), torch.randn(5, 3), z.detach(), mu.detach(), logvar.detach(), joint, dims, 40,
                       method, backend)))
    return cases


def test_compile_fullgraph(backend):
    if backend == "triton":
        pytest.skip("Triton under TRITON_INTERPRET=1 cannot be traced with fake tensors (DESIGN.md §6)")
    require(backend, "log_qz", "cpu", torch.float32)
    z, mu, logvar = _inputs(6, 6, 3, torch.float32, "cpu", seed=4)

    def tc(z, mu, logvar):
        joint, prod = fastfvae.log_qz(z, mu, logvar, dataset_size=100, method="mss", backend=backend)
        return (joint - prod).mean()

    compiled = torch.compile(tc, fullgraph=True, backend="aot_eager")
    args = [t.clone().requires_grad_() for t in (z, mu, logvar)]
    args_eager = [t.clone().requires_grad_() for t in (z, mu, logvar)]
    out = compiled(*args)
    out.backward()
    eager = tc(*args_eager)
    eager.backward()
    torch.testing.assert_close(out, eager)
    for a, b in zip(args, args_eager):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(z=torch.zeros(3, 4)), ValueError, ["z", "D = 2", "(3, 4)"]),
        (dict(z=torch.zeros(3)), ValueError, ["z", "2-D"]),
        (dict(z=torch.zeros(3, 2, dtype=torch.int64)), TypeError, ["z", "floating"]),
        (dict(logvar=torch.zeros(4, 2)), ValueError, ["logvar", "(3, 2)", "(4, 2)"]),
        (dict(mu=torch.zeros(0, 2), logvar=torch.zeros(0, 2)), ValueError, ["mu", "non-empty"]),
        (dict(dataset_size=0), ValueError, ["dataset_size", ">= 1", "0"]),
        (dict(dataset_size=2.5), ValueError, ["dataset_size", "2.5"]),
        (dict(method="xyz"), ValueError, ["method", "mws", "xyz"]),
        (dict(method="mss", dataset_size=2), ValueError, ["dataset_size", "K = 3", "2"]),
        (dict(method="mss", z=torch.zeros(4, 2)), ValueError, ["z", "M <= K", "M = 4"]),
        (dict(method="mss", z=torch.zeros(1, 2), mu=torch.zeros(1, 2), logvar=torch.zeros(1, 2)), ValueError,
         ["mu", "K >= 2"]),
    ],
)
def test_bad_input(kwargs, error, words):
    args = dict(z=torch.zeros(3, 2), mu=torch.zeros(3, 2), logvar=torch.zeros(3, 2), dataset_size=10, method="mws")
    args.update(kwargs)
    with pytest.raises(error) as info:
        fastfvae.log_qz(args.pop("z"), args.pop("mu"), args.pop("logvar"), **args)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("where", ["query", "component"])
def test_nan_propagates(backend, device, dtype, where):
    """A NaN query gives NaN in its row (every term of its logsumexps is NaN); a NaN component
    puts one NaN term among finite ones in every row's logsumexps, which the float32 kernels'
    exp must keep NaN (the float64 ones call the C library's). The backward too: a NaN log q
    makes every softmax weight of its row NaN, so the NaN reaches the finite components'
    gradients through the exp alone."""
    require(backend, "log_qz", device, dtype)
    z, mu, logvar = _inputs(4, 40, 2, dtype, device, seed=3)
    (z if where == "query" else mu)[1, 0] = float("nan")
    z, mu, logvar = (t.requires_grad_() for t in (z, mu, logvar))
    joint, dims = fastfvae.log_qz_marginals(z, mu, logvar, dataset_size=100, backend=backend)
    grad_joint, grad_dims = torch.ones_like(joint), torch.ones_like(dims)
    grads = torch.autograd.grad((joint, dims), (z, mu, logvar), (grad_joint, grad_dims))
    expected = _expected(z, mu, logvar, 100, "mws", grad_joint, grad_dims)
    for name, actual, want in zip(("log_qz", "log_qzj", "grad z", "grad mu", "grad logvar"),
                                  (joint, dims, *grads), expected):
        assert_close(actual, want, dtype, f"{name} with a NaN")


PROBE = textwrap.dedent("""
    import resource, sys, torch, fastfvae
    B, D = int(sys.argv[1]), int(sys.argv[2])
    g = torch.Generator().manual_seed(0)
    z, mu, lv = (torch.randn(B, D, generator=g).requires_grad_() for _ in range(3))
    small = [t.detach()[:8].clone().requires_grad_() for t in (z, mu, lv)]  # load the library first
    fastfvae.log_qz(*small, dataset_size=B, backend="native")[0].sum().backward()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    joint, prod = fastfvae.log_qz(z, mu, lv, dataset_size=10 * B, method="mss", backend="native")
    (joint.mean() - prod.mean()).backward()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
""")


def test_native_memory_probe():
    """Fused forward + backward at B = 3072, D = 10 in a fresh process: the materialised
    (B, B, D) float32 tensor alone would take 377 MB; the kernels need O(B D)."""
    require("native", "log_qz", "cpu", torch.float32)
    result = subprocess.run([sys.executable, "-c", PROBE, "3072", "10"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    peak_growth_mb = float(result.stdout.strip().splitlines()[-1])
    assert peak_growth_mb < 40, f"peak RSS grew by {peak_growth_mb:.1f} MB"
