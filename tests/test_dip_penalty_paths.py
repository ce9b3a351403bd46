"""dip_penalty's two forwards, each against float64 math: the CPU library's one pass
(kernels/cpu/dip_penalty.cpp, the default on the CPU) and the torch ops (GPU, torch.compile, no
library). The CPU kernel's shapes are where it can go wrong: register tiles of 8 Gram rows x one
32-byte vector (8 float32 or 4 float64 columns) over buffers padded to whole vectors, the upper triangle only,
chunks of 128 rows and slabs of at least 1024 rows; so the sizes straddle those, and a property
test draws more."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastfvae.dip_penalty
from fastfvae.backends.native import host_helpers
from fastfvae.losses import dip_penalty

F64 = torch.float64
NATIVE_MISSING = host_helpers.dip_penalty_available()


def textbook_penalty(mu, logvar, variant, lambda_od, lambda_d):
    """The penalty from the centred covariance in float64 (Cov is shift-invariant, so this keeps
    full precision for codes far from zero too)."""
    mu, logvar = mu.to(F64), logvar.to(F64)
    centred = mu - mu.mean(dim=0)
    cov = centred.T @ centred / mu.shape[0]
    if variant == "ii":
        cov = cov + torch.diag(torch.exp(logvar).mean(dim=0))
    diagonal = torch.diagonal(cov)
    off = cov - torch.diag(diagonal)
    return lambda_od * off.square().sum() + lambda_d * (diagonal - 1).square().sum()


@pytest.fixture(params=["native", "torch"])
def forward_path(request, monkeypatch):
    """Which forward dip_penalty runs on the CPU."""
    if request.param == "native":
        if NATIVE_MISSING:
            pytest.skip(NATIVE_MISSING)
        monkeypatch.setattr(fastfvae.dip_penalty, "_NATIVE", True)
    else:
        monkeypatch.setattr(fastfvae.dip_penalty, "_NATIVE", False)
    return request.param


def codes(b, d, dtype, seed, offset=0.3):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(b, d, generator=g, dtype=F64).mul(1.5).add(offset).to(dtype).requires_grad_()
    logvar = torch.randn(b, d, generator=g, dtype=F64).mul(0.7).to(dtype).requires_grad_()
    return mu, logvar


def check_against_float64(mu, logvar, variant, lambda_od, lambda_d, rtol):
    """Value and both gradients against float64 autograd of the textbook formula."""
    got = dip_penalty(mu, logvar, variant, lambda_od, lambda_d)
    mu64, logvar64 = (t.detach().to(F64).requires_grad_() for t in (mu, logvar))
    want = textbook_penalty(mu64, logvar64, variant, lambda_od, lambda_d)
    assert got.dtype == mu.dtype and got.shape == ()
    torch.testing.assert_close(got.to(F64), want, rtol=rtol, atol=rtol)
    grads = torch.autograd.grad(got, (mu, logvar), allow_unused=True)
    grads64 = torch.autograd.grad(want, (mu64, logvar64), allow_unused=True)
    scale = grads64[0].abs().max().item()
    torch.testing.assert_close(grads[0].to(F64), grads64[0], rtol=rtol * 10, atol=rtol * 10 * scale)
    if variant == "ii":
        torch.testing.assert_close(grads[1].to(F64), grads64[1], rtol=rtol * 10, atol=rtol * 10)
    else:
        assert grads[1] is None


# Rows: 2 (smallest), 129 and 300 (chunks of 128: a partial one), 2500 (slabs of 1024: three, the
# last partial). Columns: 1, 7 / 8 / 9 (one tile of 8 Gram rows, and one more), 16 / 17 (float32's
# vector of 16), 33, 64 (the benchmark's), 300 (wide: many tiles a chunk row).
@pytest.mark.parametrize("variant", ["i", "ii"])
@pytest.mark.parametrize("b, d", [(2, 1), (2, 9), (129, 7), (129, 8), (300, 17), (300, 16), (2500, 33), (1030, 64),
                                  (1100, 300)])
def test_float64_forward_and_gradient_match_textbook(forward_path, variant, b, d):
    mu, logvar = codes(b, d, F64, seed=b * 100 + d)
    check_against_float64(mu, logvar, variant, 3.0, 7.0, rtol=1e-10)


@pytest.mark.parametrize("variant", ["i", "ii"])
@pytest.mark.parametrize("b, d", [(5, 3), (300, 17), (2500, 64)])
def test_float32_forward_and_gradient_match_float64(forward_path, variant, b, d):
    mu, logvar = codes(b, d, torch.float32, seed=b + d)
    check_against_float64(mu, logvar, variant, 2.0, 5.0, rtol=2e-5)


@pytest.mark.parametrize("variant", ["i", "ii"])
def test_float32_codes_far_from_zero_keep_their_precision(forward_path, variant):
    """Codes of spread ~1.5 around 1000: the shift keeps ~5 digits where E[mu mu^T] - E[mu]E[mu]^T
    in float32 would lose them all (1e6 - 1e6)."""
    mu, logvar = codes(4096, 6, torch.float32, seed=3, offset=1000.0)
    check_against_float64(mu, logvar, variant, 2.0, 5.0, rtol=1e-4)


def test_strided_inputs_give_the_contiguous_result(forward_path):
    """Non-contiguous mu and logvar (transposed views, a column stride of B) are read through their
    strides: the same penalty as contiguous copies (bit for bit in the CPU library, whose sums do
    not depend on the layout; torch's matrix product may sum in another order)."""
    mu_t, logvar_t = (t.detach() for t in codes(19, 300, F64, seed=8))
    mu, logvar = mu_t.T, logvar_t.T  # (300, 19), strides (1, 300)
    assert not mu.is_contiguous()
    got = dip_penalty(mu, logvar, "ii", 3.0, 7.0)
    want = dip_penalty(mu.contiguous(), logvar.contiguous(), "ii", 3.0, 7.0)
    if forward_path == "native":
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-13, atol=0)


@pytest.mark.skipif(NATIVE_MISSING is not None, reason=str(NATIVE_MISSING))
def test_native_result_does_not_depend_on_the_thread_count():
    """Slab partials are added in slab order: one thread and two give the same bits."""
    mu, logvar = (t.detach() for t in codes(5000, 24, torch.float32, seed=9))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = host_helpers.dip_penalty_forward(mu, logvar, 3.0, 7.0, True)
        torch.set_num_threads(2)
        two = host_helpers.dip_penalty_forward(mu, logvar, 3.0, 7.0, True)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


@pytest.mark.skipif(NATIVE_MISSING is not None, reason=str(NATIVE_MISSING))
def test_native_outputs_are_the_distance_mean_and_variance():
    """The helper's other outputs, which the backward reads: A = Cov + diag(mean exp(logvar)) - I,
    the batch mean and exp(logvar) (only when asked for)."""
    mu, logvar = (t.detach() for t in codes(200, 11, F64, seed=4))
    distance, mean, _, variance = host_helpers.dip_penalty_forward(mu, logvar, 1.0, 1.0, True)
    centred = mu - mu.mean(dim=0)
    want = centred.T @ centred / 200 + torch.diag(logvar.exp().mean(dim=0)) - torch.eye(11, dtype=F64)
    torch.testing.assert_close(distance, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mean, mu.mean(dim=0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(variance, logvar.exp(), rtol=1e-15, atol=0)
    distance_i, _, _, none = host_helpers.dip_penalty_forward(mu, None, 1.0, 1.0, False)
    assert none is None
    torch.testing.assert_close(distance_i, centred.T @ centred / 200 - torch.eye(11, dtype=F64), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.skipif(NATIVE_MISSING is not None, reason=str(NATIVE_MISSING))
def test_native_forward_rejects_bad_arguments_by_name():
    mu = torch.randn(4, 3)
    with pytest.raises(ValueError, match="B must be at least 2"):
        host_helpers.dip_penalty_forward(mu[:1], None, 1.0, 1.0, False)
    with pytest.raises(TypeError, match="not float32=0 or float64=1"):
        host_helpers.dip_penalty_forward(mu.half(), None, 1.0, 1.0, False)
    with pytest.raises(ValueError, match="variance asked for without logvar"):
        host_helpers.dip_penalty_forward(mu, None, 1.0, 1.0, True)


def test_logvar_without_gradient_skips_the_kept_variance(forward_path):
    """DIP-VAE-II with logvar not requiring grad: mu's gradient is still exact."""
    mu, logvar = codes(150, 9, F64, seed=12)
    logvar = logvar.detach()
    got = dip_penalty(mu, logvar, "ii", 3.0, 7.0)
    (grad,) = torch.autograd.grad(got, (mu,))
    mu64 = mu.detach().requires_grad_()
    (want,) = torch.autograd.grad(textbook_penalty(mu64, logvar, "ii", 3.0, 7.0), (mu64,))
    torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(b=st.integers(2, 300), d=st.integers(1, 40), variant=st.sampled_from(["i", "ii"]),
       offset=st.floats(-50, 50), seed=st.integers(0, 2**31 - 1))
def test_property_native_forward_matches_textbook(b, d, variant, offset, seed):
    """Any batch and width, float64: the CPU library's penalty against the textbook."""
    if NATIVE_MISSING:
        pytest.skip(NATIVE_MISSING)
    mu, logvar = (t.detach() for t in codes(b, d, F64, seed=seed, offset=offset))
    distance, mean, penalty, _ = host_helpers.dip_penalty_forward(mu, logvar if variant == "ii" else None,
                                                                  3.0, 7.0, False)
    torch.testing.assert_close(penalty, textbook_penalty(mu, logvar, variant, 3.0, 7.0), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(mean, mu.mean(dim=0), rtol=1e-12, atol=1e-12 * (1 + abs(offset)))
