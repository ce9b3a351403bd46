"""The loss modules over input dtypes: 16-bit inputs are reduced in float32 and their terms
returned in float32, as the ops do (DESIGN.md §2). Each module's terms at float16/bfloat16
against the same formulas in float64 on the same (rounded) inputs, within float32's tolerance,
including sums that overflow float16 (65504) if reduced in it."""
from __future__ import annotations

import pytest
import torch

import fastfvae
from conftest import TOLERANCES
from fastfvae import losses, reference

F64 = torch.float64
HALF_DTYPES = [torch.float16, torch.bfloat16]


def _batch(dtype, b=16, c=1, hw=8, d=4, seed=0, mu_scale=1.5, mu_mean=0.3):
    """Inputs rounded to ``dtype``: logits, 0/1 targets, mu, logvar, z, 2-logit D(z)."""
    g = torch.Generator().manual_seed(seed)
    x_recon = torch.randn(b, c, hw, hw, generator=g).mul(2).to(dtype)
    x = (torch.rand(b, c, hw, hw, generator=g) > 0.5).to(dtype)
    mu = torch.randn(b, d, generator=g).mul(mu_scale).add(mu_mean).to(dtype)
    logvar = torch.randn(b, d, generator=g).mul(0.7).to(dtype)
    z = (mu.float() + torch.randn(b, d, generator=g) * torch.exp(logvar.float() / 2)).to(dtype)
    d_z = torch.randn(b, 2, generator=g).to(dtype)
    return x_recon, x, mu, logvar, z, d_z


def _f64(*tensors):
    return tuple(t.to(F64) for t in tensors)


def _assert_terms(got, want, what):
    """Every term float32 and within float32's tolerance of the float64 value."""
    for name, g, w in zip(got._fields, got, want):
        assert g.dtype == torch.float32, f"{what}.{name}: returned {g.dtype}, expected float32"
        assert torch.isfinite(g).all(), f"{what}.{name}: {g} (float64: {w})"
        torch.testing.assert_close(g.to(F64), w.to(F64), **TOLERANCES[torch.float32],
                                   msg=lambda m: f"{what}.{name}: {m}")


def _kl(mu, logvar):
    """The scalar KL as the loops pass it (reparameterize_kl: float32 for 16-bit inputs)."""
    return fastfvae.reparameterize_kl(mu, logvar)[1]


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("distribution", ["bernoulli", "gaussian"])
def test_reconstruction_loss_of_16_bit_inputs_is_a_float32_sum(dtype, distribution):
    x_recon, x, *_ = _batch(dtype)
    got = losses.reconstruction_loss(x_recon, x, distribution)
    want = losses.reconstruction_loss(*_f64(x_recon, x), distribution)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.to(F64), want, **TOLERANCES[torch.float32])


def test_reconstruction_sum_of_a_float16_batch_does_not_overflow():
    """B = 64 images of 1x64x64: the per-batch sum (~2e5) is past float16's 65504."""
    g = torch.Generator().manual_seed(1)
    x_recon = torch.randn(64, 1, 64, 64, generator=g).half()
    x = (torch.rand(64, 1, 64, 64, generator=g) > 0.5).half()
    got = losses.reconstruction_loss(x_recon, x)
    want = losses.reconstruction_loss(x_recon.double(), x.double())
    assert float(want) * 64 > 65504  # the case: the sum itself overflows float16
    torch.testing.assert_close(got.to(F64), want, **TOLERANCES[torch.float32])


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_factorvae_and_betavae_losses_of_16_bit_inputs(dtype):
    x_recon, x, mu, logvar, z, d_z = _batch(dtype, seed=2)
    kl, kl64 = _kl(mu, logvar), _kl(*_f64(mu, logvar))
    module = losses.FactorVAELoss(gamma=35.0)
    _assert_terms(module(x_recon, x, kl, d_z), module(*_f64(x_recon, x), kl64, d_z.to(F64)), "FactorVAELoss")
    module = losses.BetaVAELoss(beta=4.0)
    _assert_terms(module(x_recon, x, kl, ), module(*_f64(x_recon, x), kl64), "BetaVAELoss")
    # A 16-bit kl (a loop's own KL) is reduced with the rest in float32 as well.
    _assert_terms(module(x_recon, x, kl.to(dtype)), module(*_f64(x_recon, x), kl.to(dtype).to(F64)),
                  "BetaVAELoss(16-bit kl)")


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("method", ["mws", "mss"])
def test_betatcvae_loss_of_16_bit_inputs(dtype, method):
    x_recon, x, mu, logvar, z, _ = _batch(dtype, seed=3)
    module = losses.BetaTCVAELoss(dataset_size=1000, method=method)
    _assert_terms(module(x_recon, x, z, mu, logvar), module(*_f64(x_recon, x, z, mu, logvar)), "BetaTCVAELoss")


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("variant", ["i", "ii"])
def test_dipvae_loss_of_16_bit_inputs(dtype, variant):
    x_recon, x, mu, logvar, *_ = _batch(dtype, seed=4)
    kl, kl64 = _kl(mu, logvar), _kl(*_f64(mu, logvar))
    module = losses.DIPVAELoss(variant, lambda_od=3.0, lambda_d=7.0)
    _assert_terms(module(x_recon, x, kl, mu, logvar), module(*_f64(x_recon, x), kl64, *_f64(mu, logvar)),
                  "DIPVAELoss")


def test_dip_covariance_of_float16_codes_far_from_zero_does_not_overflow():
    """mu at scale 3 around 5 (B = 64, D = 10): the regulariser (~7.5e4) is past float16's range."""
    x_recon, x, mu, logvar, *_ = _batch(torch.float16, b=64, d=10, seed=25, mu_scale=3.0, mu_mean=5.0)
    kl, kl64 = _kl(mu, logvar), _kl(*_f64(mu, logvar))
    module = losses.DIPVAELoss("i")
    got = module(x_recon, x, kl, mu, logvar)
    want = module(*_f64(x_recon, x), kl64, *_f64(mu, logvar))
    assert float(want.dip) > 65504
    _assert_terms(got, want, "DIPVAELoss")


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_annealedvae_loss_of_16_bit_inputs(dtype):
    x_recon, x, mu, logvar, *_ = _batch(dtype, seed=6)
    module = losses.AnnealedVAELoss(gamma=1000.0, c_max=25.0, iteration_threshold=100)
    for kl, kl64 in ((_kl(mu, logvar), _kl(*_f64(mu, logvar))),
                     (_kl(mu, logvar).to(dtype), _kl(mu, logvar).to(dtype).to(F64))):
        _assert_terms(module(x_recon, x, kl, 37), module(*_f64(x_recon, x), kl64, 37), "AnnealedVAELoss")


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_16_bit_gradients_follow_the_float32_loss(dtype):
    """The gradients still reach the 16-bit inputs (in their dtype), as float64 autograd gives
    them, to the 16-bit dtype's tolerance."""
    x_recon, x, mu, logvar, *_ = _batch(dtype, seed=7)
    leaves = [t.clone().requires_grad_() for t in (x_recon, mu, logvar)]
    leaves64 = [t.to(F64).requires_grad_() for t in (x_recon, mu, logvar)]
    for (xr, m, lv), xx in ((leaves, x), (leaves64, x.to(F64))):
        total = losses.DIPVAELoss("ii", lambda_od=2.0)(xr, xx, _kl(m, lv), m, lv).total
        total.backward()
    for got, want in zip(leaves, leaves64):
        assert got.grad.dtype == dtype
        torch.testing.assert_close(got.grad.to(F64), want.grad, **TOLERANCES[dtype])
