"""reparameterize_kl on every backend against the float64 reference (DESIGN.md §1, §13)."""
from __future__ import annotations

import pytest
import torch

import fastfvae
from fastfvae import reference
from fastfvae.reference import compute_dtype
from conftest import FLOAT_DTYPES, assert_close, non_contiguous, require, seed_for

SHAPES = [(1, 1), (1, 10), (7, 3), (64, 10), (33, 65)]


def _inputs(shape, dtype, device, generator_seed):
    g = torch.Generator().manual_seed(generator_seed)
    mu = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    logvar = (torch.randn(shape, generator=g) * 1.5).to(device=device, dtype=dtype)
    eps = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    return mu, logvar, eps


def _expected(mu, logvar, eps, reduction, grad_z, grad_kl):
    """Values and gradients from the reference in float64 autograd."""
    mu64, lv64, eps64 = (t.detach().double().requires_grad_() for t in (mu, logvar, eps))
    z, kl = reference.reparameterize_kl(mu64, lv64, eps64, reduction)
    torch.autograd.backward((z, kl), (grad_z.double(), grad_kl.double()))
    return z, kl, mu64.grad, lv64.grad, eps64.grad


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_reference_with_given_eps(backend, device, dtype, shape, reduction):
    require(backend, "reparameterize_kl", device, dtype)
    mu, logvar, eps = _inputs(shape, dtype, device, generator_seed=hash((shape, reduction)) % 1000)
    mu.requires_grad_(), logvar.requires_grad_(), eps.requires_grad_()
    z, kl = fastfvae.reparameterize_kl(mu, logvar, eps=eps, reduction=reduction, backend=backend)
    assert z.dtype == dtype and kl.dtype == compute_dtype(dtype) and z.shape == shape  # 17.3
    assert kl.shape == ((shape[0],) if reduction == "none" else ())
    grad_z = torch.randn(shape, device=device, dtype=dtype)
    grad_kl = torch.randn(kl.shape, device=device, dtype=dtype)
    torch.autograd.backward((z, kl), (grad_z, grad_kl))
    z_ref, kl_ref, gmu_ref, glv_ref, geps_ref = _expected(mu, logvar, eps, reduction, grad_z, grad_kl)
    assert_close(z, z_ref, dtype, "z")
    assert_close(kl, kl_ref, dtype, "kl")
    assert_close(mu.grad, gmu_ref, dtype, "grad mu")
    assert_close(logvar.grad, glv_ref, dtype, "grad logvar")
    assert_close(eps.grad, geps_ref, dtype, "grad eps")


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_rows_wider_than_a_tile(backend, device, reduction):
    """D = 2100: wider than the CPU kernel's 2048-element tile, so it takes its one-row-at-a-time
    path; given eps, against the reference in float64."""
    dtype = torch.float64
    require(backend, "reparameterize_kl", device, dtype)
    mu, logvar, eps = _inputs((3, 2100), dtype, device, generator_seed=12)
    mu.requires_grad_(), logvar.requires_grad_(), eps.requires_grad_()
    z, kl = fastfvae.reparameterize_kl(mu, logvar, eps=eps, reduction=reduction, backend=backend)
    grad_z = torch.randn(z.shape, device=device, dtype=dtype)
    grad_kl = torch.randn(kl.shape, device=device, dtype=dtype)
    torch.autograd.backward((z, kl), (grad_z, grad_kl))
    expected = _expected(mu, logvar, eps, reduction, grad_z, grad_kl)
    for name, actual, want in zip(("z", "kl", "grad mu", "grad logvar", "grad eps"),
                                  (z, kl, mu.grad, logvar.grad, eps.grad), expected):
        assert_close(actual, want, dtype, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_noncontiguous_and_expanded_gradients(backend, device, dtype):
    require(backend, "reparameterize_kl", device, dtype)
    mu, logvar, eps = _inputs((9, 13), dtype, device, generator_seed=3)
    mu_nc, lv_nc, eps_nc = (non_contiguous(t).requires_grad_() for t in (mu, logvar, eps))
    z, kl = fastfvae.reparameterize_kl(mu_nc, lv_nc, eps=eps_nc, backend=backend)
    (z.sum() + 2.0 * kl).backward()  # grad_z arrives expanded (stride 0)
    z_ref, kl_ref, gmu_ref, glv_ref, _ = _expected(
        mu, logvar, eps, "mean", torch.ones_like(mu), torch.tensor(2.0, dtype=dtype, device=device)
    )
    assert_close(z, z_ref, dtype, "z")
    assert_close(kl, kl_ref, dtype, "kl")
    assert_close(mu_nc.grad, gmu_ref, dtype, "grad mu")
    assert_close(lv_nc.grad, glv_ref, dtype, "grad logvar")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (64, 10)], ids=str)
def test_in_kernel_eps_is_the_shared_philox_stream(backend, device, dtype, shape):
    """Without eps, z = mu + std * philox_randn(seed, i*D + d) on every backend."""
    require(backend, "reparameterize_kl", device, dtype)
    mu, logvar, _ = _inputs(shape, dtype, device, generator_seed=11)
    seed = seed_for(1234, device)
    torch.manual_seed(1234)
    z, kl = fastfvae.reparameterize_kl(mu, logvar, backend=backend)
    offsets = torch.arange(shape[0] * shape[1], device=device).reshape(shape)
    eps = reference.philox_randn(seed, offsets)
    z_ref, kl_ref = reference.reparameterize_kl(mu.double(), logvar.double(), eps.double())
    # eps is a float32 quantity (tl.randn) whose last bits may differ between libm builds, so
    # float64 outputs are held to float32's tolerance here.
    assert_close(z, z_ref, torch.float32 if dtype == torch.float64 else dtype, "z")
    assert_close(kl, kl_ref, dtype, "kl")


def test_manual_seed_controls_the_noise(backend, device):
    require(backend, "reparameterize_kl", device, torch.float32)
    mu = torch.zeros(16, 8, device=device)
    torch.manual_seed(7)
    z1, _ = fastfvae.reparameterize_kl(mu, mu, backend=backend)
    z2, _ = fastfvae.reparameterize_kl(mu, mu, backend=backend)
    torch.manual_seed(7)
    z3, _ = fastfvae.reparameterize_kl(mu, mu, backend=backend)
    assert torch.equal(z1, z3), "same torch.manual_seed must give the same eps"
    assert not torch.equal(z1, z2), "successive calls must draw fresh eps"


def test_noise_is_standard_normal(backend, device):
    require(backend, "reparameterize_kl", device, torch.float32)
    n_rows, dim = 4096, 32  # 131072 draws
    zeros = torch.zeros(n_rows, dim, device=device)
    torch.manual_seed(0)
    eps, _ = fastfvae.reparameterize_kl(zeros, zeros, backend=backend)
    eps = eps.double().flatten().cpu()
    n = eps.numel()
    assert abs(eps.mean().item()) < 5 / n**0.5, eps.mean()
    assert abs(eps.var().item() - 1) < 5 * (2 / n) ** 0.5, eps.var()
    within_one = (eps.abs() < 1).double().mean().item()
    assert abs(within_one - 0.682689) < 5 * (0.6827 * 0.3173 / n) ** 0.5, within_one
    # Box-Muller on u1 >= 1e-7 truncates at sqrt(-2 ln 1e-7) ~ 5.68 sigma (documented).
    assert eps.abs().max().item() <= 5.68


def test_nan_and_inf_propagate_like_the_reference(backend, device):
    require(backend, "reparameterize_kl", device, torch.float32)
    mu = torch.randn(4, 3, device=device)
    logvar = torch.randn(4, 3, device=device)
    eps = torch.randn(4, 3, device=device)
    mu[1, 2] = float("nan")
    logvar[2, 0] = float("inf")
    z, kl = fastfvae.reparameterize_kl(mu, logvar, eps=eps, reduction="none", backend=backend)
    z_ref, kl_ref = reference.reparameterize_kl(mu, logvar, eps, "none")
    assert_close(z, z_ref, torch.float32, "z")
    assert_close(kl, kl_ref, torch.float32, "kl")


SPECIAL_VALUES = [0.0, -1.5, 2.0, 90.0, -90.0, float("inf"), float("-inf"), float("nan")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_special_values_forward_matches_the_reference(backend, dtype):
    """Every (mu, logvar, eps) triple of special values, one element each: z, the per-row kl and
    the gradients of mu, logvar and eps are NaN, +-inf or finite exactly where the reference's
    (autograd, same dtype) are, and close where finite. (The gradients were left out while the
    backward formed z - mu for std * eps, which is NaN for an infinite mu.)"""
    require(backend, "reparameterize_kl", "cpu", dtype)
    values = torch.tensor(SPECIAL_VALUES, dtype=torch.float64)
    triples = torch.cartesian_prod(values, values, values).unbind(1)
    mu, logvar, eps = (t.reshape(-1, 1).to(dtype).requires_grad_() for t in triples)
    z, kl = fastfvae.reparameterize_kl(mu, logvar, eps=eps, reduction="none", backend=backend)
    torch.autograd.backward((z, kl), (torch.ones_like(z), torch.ones_like(kl)))
    # the reference in the same dtype: exp(90) overflows float32 but not float64
    mu_r, logvar_r, eps_r = (t.detach().clone().requires_grad_() for t in (mu, logvar, eps))
    z_ref, kl_ref = reference.reparameterize_kl(mu_r, logvar_r, eps_r, "none")
    torch.autograd.backward((z_ref, kl_ref), (torch.ones_like(z_ref), torch.ones_like(kl_ref)))
    pairs = (("z", z, z_ref), ("kl", kl, kl_ref), ("grad mu", mu.grad, mu_r.grad),
             ("grad logvar", logvar.grad, logvar_r.grad), ("grad eps", eps.grad, eps_r.grad))
    for name, got, want in pairs:
        got, want = got.detach().double(), want.detach().double()
        bad = (got.isnan() != want.isnan()) | (got.isinf() != want.isinf()) | (got.isinf() & (got != want))
        rows = bad.reshape(len(mu), -1).any(dim=1).nonzero().flatten().tolist()[:5]
        assert not rows, f"{name}: NaN/inf pattern differs at (mu, logvar, eps) = " + str(
            [(mu[i].item(), logvar[i].item(), eps[i].item(), got.reshape(len(mu), -1)[i].tolist(),
              want.reshape(len(mu), -1)[i].tolist()) for i in rows])
        finite = want.isfinite()
        assert_close(got[finite].to(dtype), want[finite].to(dtype), dtype, name)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_float64(backend, reduction):
    require(backend, "reparameterize_kl", "cpu", torch.float64)
    g = torch.Generator().manual_seed(5)
    mu, logvar, eps = (torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    torch.autograd.gradcheck(
        lambda m, l, e: fastfvae.reparameterize_kl(m, l, eps=e, reduction=reduction, backend=backend),
        (mu, logvar, eps),
    )


def test_given_eps_draws_no_seed(backend, device):
    """With eps given nothing is drawn, so the user's generator is not advanced."""
    require(backend, "reparameterize_kl", device, torch.float32)
    mu = torch.randn(6, 4, device=device)
    torch.manual_seed(11)
    fastfvae.reparameterize_kl(mu, mu, eps=torch.ones_like(mu), backend=backend)
    after_op = torch.randint(2**62, (1,), device=device)
    torch.manual_seed(11)
    untouched = torch.randint(2**62, (1,), device=device)
    assert torch.equal(after_op, untouched)


# ---------------------------------------------------------------------------------------------
# The logvar gradient against the TEXTBOOK formula in float64: no backend may
# rebuild std * eps as z - mu from the rounded z.
# ---------------------------------------------------------------------------------------------
def _textbook_grads(mu, logvar, eps, grad_z, grad_kl, reduction):
    """(grad_mu, grad_logvar) by float64 autograd of z = mu + exp(logvar/2) * eps and the
    textbook KL 0.5 * sum_d (mu^2 + exp(logvar) - logvar - 1), reduced over rows."""
    mu64, lv64 = (t.detach().double().cpu().requires_grad_() for t in (mu, logvar))
    grad_z, grad_kl = grad_z.double().cpu(), grad_kl.double().cpu()
    z = mu64 + torch.exp(0.5 * lv64) * eps.detach().double().cpu()
    kl_rows = 0.5 * (mu64**2 + torch.exp(lv64) - lv64 - 1).sum(dim=1)
    kl = {"mean": kl_rows.mean, "sum": kl_rows.sum, "none": lambda: kl_rows}[reduction]()
    torch.autograd.backward((z, kl), (grad_z, grad_kl))
    return mu64.grad, lv64.grad


def _assert_close_to_scale(actual, expected, dtype, what):
    """assert_close after dividing both by max|expected|: the dtype's tolerance relative to the
    gradient's size (its absolute tolerance alone would pass a gradient of 1e-7 that is 0)."""
    scale = expected.abs().max().clamp_min(1e-300)
    assert_close(actual.detach().double().cpu() / scale.cpu(), expected.cpu() / scale.cpu(), dtype, what)


# (dtype, mu, logvar): std * eps is below z's last bit, so z - mu loses it (old code: bfloat16
# ~50% mean error, float16 ~3.5%, float32 exactly 0), plus ordinary values.
PRECISION_CASES = [
    (torch.bfloat16, 3.0, -8.0),
    (torch.float16, 3.0, -8.0),
    (torch.float32, 10.0, -30.0),
    (torch.float64, 1.0e4, -60.0),
    (torch.float32, 0.3, 0.5),
]


@pytest.mark.parametrize("drawn", [True, False], ids=["drawn_eps", "given_eps"])
@pytest.mark.parametrize("dtype,mu_value,logvar_value", PRECISION_CASES, ids=str)
def test_logvar_gradient_is_the_textbook_one(backend, device, dtype, mu_value, logvar_value, drawn):
    require(backend, "reparameterize_kl", device, dtype)
    shape = (48, 10)
    mu = torch.full(shape, mu_value, device=device, dtype=dtype, requires_grad=True)
    logvar = torch.full(shape, logvar_value, device=device, dtype=dtype, requires_grad=True)
    g = torch.Generator().manual_seed(21)
    grad_z = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    if drawn:
        seed = seed_for(99, device)
        torch.manual_seed(99)
        z, kl = fastfvae.reparameterize_kl(mu, logvar, reduction="sum", backend=backend)
        eps = reference.reparameterize_noise(seed, *shape)
    else:
        eps = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
        z, kl = fastfvae.reparameterize_kl(mu, logvar, eps=eps, reduction="sum", backend=backend)
    # Only z carries a gradient: the KL term (~0.5 * gkl) would hide the sample's term.
    torch.autograd.backward((z, kl), (grad_z, torch.zeros((), device=device, dtype=dtype)))
    gmu_ref, glv_ref = _textbook_grads(mu, logvar, eps, grad_z, torch.zeros(()), "sum")
    # A drawn eps is a float32 quantity whose last bits may differ between libm builds: float64
    # is held to float32's tolerance then.
    tol_dtype = torch.float32 if drawn and dtype == torch.float64 else dtype
    _assert_close_to_scale(logvar.grad, glv_ref, tol_dtype, "grad logvar")
    _assert_close_to_scale(mu.grad, gmu_ref, tol_dtype, "grad mu")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_gradients_with_drawn_eps_match_the_textbook(backend, device, dtype, reduction):
    """Random inputs, eps drawn in the op: both gradients against float64 autograd of the
    textbook formula with the same eps (reference.reparameterize_noise of the op's seed)."""
    require(backend, "reparameterize_kl", device, dtype)
    mu, logvar, _ = _inputs((37, 19), dtype, device, generator_seed=31)
    mu.requires_grad_(), logvar.requires_grad_()
    seed = seed_for(5, device)
    torch.manual_seed(5)
    z, kl = fastfvae.reparameterize_kl(mu, logvar, reduction=reduction, backend=backend)
    grad_z = torch.randn(z.shape, device=device, dtype=dtype)
    grad_kl = torch.randn(kl.shape, device=device, dtype=dtype)
    torch.autograd.backward((z, kl), (grad_z, grad_kl))
    eps = reference.reparameterize_noise(seed, 37, 19)
    gmu_ref, glv_ref = _textbook_grads(mu, logvar, eps, grad_z.cpu(), grad_kl.cpu(), reduction)
    # eps is a float32 quantity (tl.randn), so float64 is held to float32's tolerance here.
    tol_dtype = torch.float32 if dtype == torch.float64 else dtype
    assert_close(mu.grad, gmu_ref, tol_dtype, "grad mu")
    assert_close(logvar.grad, glv_ref, tol_dtype, "grad logvar")


@pytest.mark.parametrize("drawn", [True, False], ids=["drawn_eps", "given_eps"])
def test_infinite_mu_leaves_the_logvar_gradient_finite(backend, device, drawn):
    """mu = +-inf: z - mu would be inf - inf = NaN; the textbook dlogvar does not involve mu."""
    require(backend, "reparameterize_kl", device, torch.float32)
    shape = (6, 5)
    g = torch.Generator().manual_seed(8)
    mu = torch.randn(shape, generator=g).to(device)
    mu[1, 2], mu[4, 0] = float("inf"), float("-inf")
    logvar = torch.randn(shape, generator=g).to(device)
    mu.requires_grad_(), logvar.requires_grad_()
    grad_z = torch.randn(shape, generator=g).to(device)
    grad_kl = torch.randn(shape[0], generator=g).to(device)
    if drawn:
        seed = seed_for(3, device)
        torch.manual_seed(3)
        z, kl = fastfvae.reparameterize_kl(mu, logvar, reduction="none", backend=backend)
        eps = reference.reparameterize_noise(seed, *shape)
    else:
        eps = torch.randn(shape, generator=g).to(device)
        z, kl = fastfvae.reparameterize_kl(mu, logvar, eps=eps, reduction="none", backend=backend)
    torch.autograd.backward((z, kl), (grad_z, grad_kl))
    gmu_ref, glv_ref = _textbook_grads(mu, logvar, eps, grad_z.cpu(), grad_kl.cpu(), "none")
    assert torch.isfinite(logvar.grad).all(), logvar.grad
    assert_close(logvar.grad, glv_ref, torch.float32, "grad logvar")
    assert_close(mu.grad, gmu_ref, torch.float32, "grad mu")


# ------------------------------------------------------------------ kept noise (CPU, native)
# From 8192 elements the eager CPU path keeps its drawn eps for the backward (a separate draw of
# the same numbers, given to the kernel) instead of regenerating it there. Nothing may change
# but the speed: z and every gradient equal the regenerating path's bit for bit.
KEPT_SHAPE = (300, 33)  # 9,900 elements, above the threshold; odd sizes leave partial blocks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_kept_noise_gives_the_regenerating_paths_results_bit_for_bit(dtype, reduction):
    require("native", "reparameterize_kl", "cpu", dtype)
    from fastfvae.backends import native
    import importlib

    op_module = importlib.import_module("fastfvae.ops.reparameterize_kl")

    assert KEPT_SHAPE[0] * KEPT_SHAPE[1] >= op_module._KEEP_NOISE_MIN_ELEMENTS
    mu, logvar, _ = _inputs(KEPT_SHAPE, dtype, "cpu", generator_seed=44)
    mu.requires_grad_(), logvar.requires_grad_()
    assert op_module._keeps_noise("native", mu, logvar)
    seed = seed_for(21, "cpu")
    torch.manual_seed(21)
    z, kl = fastfvae.reparameterize_kl(mu, logvar, reduction=reduction, backend="native")
    grad_z = torch.randn(z.shape, dtype=dtype)
    grad_kl = torch.randn(kl.shape, dtype=kl.dtype)
    torch.autograd.backward((z, kl), (grad_z, grad_kl))
    # The kernels with eps regenerated from the same seed (widened as the op widens 16-bit inputs).
    wide = torch.float32 if dtype == torch.bfloat16 else dtype
    m, lv = mu.detach().to(wide), logvar.detach().to(wide)
    z_ref, kl_ref = native.reparameterize_kl_forward(m, lv, None, seed, reduction)
    gmu_ref, glv_ref, _ = native.reparameterize_kl_backward(grad_z.to(wide), grad_kl, m, lv, None, seed, reduction,
                                                            False)
    assert torch.equal(z, z_ref.to(dtype)), "z differs from the in-kernel draw"
    assert torch.equal(kl, kl_ref.to(kl.dtype))
    assert torch.equal(mu.grad, gmu_ref.to(dtype)), "grad mu differs from the regenerating backward"
    assert torch.equal(logvar.grad, glv_ref.to(dtype)), "grad logvar differs from the regenerating backward"


def test_kept_noise_follows_manual_seed_and_the_textbook_gradients():
    require("native", "reparameterize_kl", "cpu", torch.float32)
    mu, logvar, _ = _inputs(KEPT_SHAPE, torch.float32, "cpu", generator_seed=45)
    mu.requires_grad_(), logvar.requires_grad_()
    seed = seed_for(9, "cpu")
    torch.manual_seed(9)
    z, kl = fastfvae.reparameterize_kl(mu, logvar, backend="native")
    with torch.no_grad():  # the inference path regenerates in the kernel: the same draw
        torch.manual_seed(9)
        z_inference, _ = fastfvae.reparameterize_kl(mu, logvar, backend="native")
    assert torch.equal(z, z_inference)
    grad_z = torch.randn(z.shape)
    torch.autograd.backward((z, kl), (grad_z, torch.ones(())))
    eps = reference.reparameterize_noise(seed, *KEPT_SHAPE)
    gmu_ref, glv_ref = _textbook_grads(mu, logvar, eps, grad_z, torch.ones(()), "mean")
    assert_close(mu.grad, gmu_ref, torch.float32, "grad mu")
    assert_close(logvar.grad, glv_ref, torch.float32, "grad logvar")


# ---------------------------------------------------------------------------------------------
# opcheck cases (tests/test_compile.py runs them for every op of fastfvae/registry.py)
# ---------------------------------------------------------------------------------------------
def opcheck_cases(backend):
    """(custom op, arguments) pairs for torch.library.opcheck: both reductions' forwards and the
    backward with a drawn and with a given eps."""
    g = torch.Generator().manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, generator=g, requires_grad=True)

    seed, ops = torch.tensor([12345]), torch.ops.fastfvae
    return [
        (ops.reparameterize_kl.default, (t(6, 5), t(6, 5), None, seed, "mean", backend)),
        (ops.reparameterize_kl.default, (t(6, 5), t(6, 5), t(6, 5), seed, "none", backend)),
        (ops.reparameterize_kl_backward.default,
         (torch.randn(6, 5), torch.randn(()), torch.randn(6, 5), torch.randn(6, 5), seed, "sum", "drawn", backend)),
        (ops.reparameterize_kl_backward.default,
         (torch.randn(6, 5), torch.randn(6), torch.randn(6, 5), torch.randn(6, 5), torch.randn(6, 5), "none",
          "given_needs_grad", backend)),
    ]
