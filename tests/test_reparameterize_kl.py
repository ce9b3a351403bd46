"""reparameterize_kl on every backend against the float64 reference (DESIGN.md §1, §8)."""
from __future__ import annotations

import pytest
import torch

import fastfvae
from fastfvae import reference
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
    assert z.dtype == dtype and kl.dtype == dtype and z.shape == shape
    assert kl.shape == ((shape[0],) if reduction == "none" else ())
    grad_z = torch.randn(shape, device=device, dtype=dtype)
    grad_kl = torch.randn(kl.shape, device=device, dtype=dtype)
    torch.autograd.backward((z, kl), (grad_z, grad_kl))
    z_ref, kl_ref, gmu_ref, glv_ref, geps_ref = _expected(mu, logvar, eps, reduction, grad_z, grad_kl)
    assert_close(z, z_ref, dtype, "z")
    assert_close(kl, kl_ref, dtype, "kl")
    assert_close(mu.grad, gmu_ref, dtype, "grad mu")
    # dlogvar = 0.5 * gz * (z - mu) uses the op's own z, rounded to dtype (no stored eps):
    # shift the exact reference by that rounding before comparing.
    z_rounding = z.detach().double() - z_ref.detach()
    glv_expected = glv_ref + 0.5 * grad_z.double() * z_rounding
    assert_close(logvar.grad, glv_expected, dtype, "grad logvar")
    assert_close(eps.grad, geps_ref, dtype, "grad eps")


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
    """Every (mu, logvar, eps) triple of special values, one element each: z and the per-row kl
    are NaN, +-inf or finite exactly where the reference's are, and close where finite. (The
    backward is left out on purpose: it forms z - mu for std * eps (DESIGN.md §1), which is NaN
    for infinite mu where the reference's gradient is not.)"""
    require(backend, "reparameterize_kl", "cpu", dtype)
    values = torch.tensor(SPECIAL_VALUES, dtype=torch.float64)
    mu, logvar, eps = (t.reshape(-1, 1).to(dtype) for t in torch.cartesian_prod(values, values, values).unbind(1))
    z, kl = fastfvae.reparameterize_kl(mu, logvar, eps=eps, reduction="none", backend=backend)
    # the reference in the same dtype: exp(90) overflows float32 but not float64
    z_ref, kl_ref = reference.reparameterize_kl(mu, logvar, eps, "none")
    for name, got, want in (("z", z, z_ref), ("kl", kl, kl_ref)):
        got, want = got.double(), want.double()
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
    """issue 15: with eps given nothing is drawn, so the user's generator is not advanced."""
    require(backend, "reparameterize_kl", device, torch.float32)
    mu = torch.randn(6, 4, device=device)
    torch.manual_seed(11)
    fastfvae.reparameterize_kl(mu, mu, eps=torch.ones_like(mu), backend=backend)
    after_op = torch.randint(2**62, (1,), device=device)
    torch.manual_seed(11)
    untouched = torch.randint(2**62, (1,), device=device)
    assert torch.equal(after_op, untouched)
