"""DIP-VAE-I/II and AnnealedVAE loss modules against disentanglement_lib's formulas, written out
directly in float64 (methods/unsupervised/vae.py: compute_covariance_z_mean,
regularize_diag_off_diag_dip, DIPVAE.regularizer, anneal, AnnealedVAE.regularizer)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastfvae
import fastfvae.dip_penalty
from fastfvae.losses import AnnealedVAELoss, DIPVAELoss, reconstruction_loss

F64 = torch.float64


# --------------------------------------------------------------------------------------------
# The textbook formulas, one entry at a time (no shared code with fastfvae.losses)
# --------------------------------------------------------------------------------------------
def textbook_dip(mu, logvar, variant, lambda_od, lambda_d):
    """disentanglement_lib: Cov[mu] = E[mu mu^T] - E[mu] E[mu]^T; DIP-II adds E[diag(exp(logvar))];
    lambda_od * sum of squared off-diagonal entries + lambda_d * sum of (diagonal - 1)^2."""
    b, d = mu.shape
    e_mu_mu = sum(torch.outer(mu[i], mu[i]) for i in range(b)) / b
    e_mu = mu.sum(dim=0) / b
    cov = e_mu_mu - torch.outer(e_mu, e_mu)
    if variant == "ii":
        cov = cov + sum(torch.diag(torch.exp(logvar[i])) for i in range(b)) / b
    total = mu.new_zeros(())
    for i in range(d):
        for j in range(d):
            if i == j:
                total = total + lambda_d * (cov[i, i] - 1) ** 2
            else:
                total = total + lambda_od * cov[i, j] ** 2
    return total


def textbook_annealed(kl, step, gamma, c_max, iteration_threshold):
    capacity = min(c_max, c_max * step / iteration_threshold)
    return gamma * torch.abs(kl - capacity)


def random_batch(b, d, generator, dtype=F64):
    x = (torch.rand(b, 1, 4, 4, generator=generator) > 0.5).to(dtype)
    x_recon = torch.randn(b, 1, 4, 4, generator=generator, dtype=dtype, requires_grad=True)
    mu = torch.randn(b, d, generator=generator, dtype=dtype).mul(1.5).add(0.3).requires_grad_()
    logvar = torch.randn(b, d, generator=generator, dtype=dtype).mul(0.7).requires_grad_()
    return x_recon, x, mu, logvar


# --------------------------------------------------------------------------------------------
# DIP-VAE
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["i", "ii"])
@pytest.mark.parametrize("b, d", [(2, 3), (3, 1), (7, 5), (64, 10)])
def test_dip_value_and_gradient_match_textbook_float64(variant, b, d):
    g = torch.Generator().manual_seed(100 * b + d)
    x_recon, x, mu, logvar = random_batch(b, d, g)
    kl = fastfvae.reparameterize_kl(mu, logvar)[1]
    loss = DIPVAELoss(variant, lambda_od=3.0, lambda_d=7.0)
    out = loss(x_recon, x, kl, mu, logvar)

    mu_t, logvar_t = mu.detach().clone().requires_grad_(), logvar.detach().clone().requires_grad_()
    expected = textbook_dip(mu_t, logvar_t, variant, 3.0, 7.0)
    torch.testing.assert_close(out.dip, expected, rtol=1e-12, atol=1e-12)

    grad_ours = torch.autograd.grad(out.dip, (mu, logvar), allow_unused=True)
    grad_text = torch.autograd.grad(expected, (mu_t, logvar_t), allow_unused=True)
    torch.testing.assert_close(grad_ours[0], grad_text[0], rtol=1e-10, atol=1e-12)
    if variant == "ii":
        torch.testing.assert_close(grad_ours[1], grad_text[1], rtol=1e-10, atol=1e-12)
    else:  # DIP-VAE-I does not depend on logvar
        assert grad_ours[1] is None and grad_text[1] is None


def vectorised_textbook_dip(mu, logvar, variant, lambda_od, lambda_d):
    """textbook_dip without the Python loops over rows (for batches too tall for them)."""
    b = mu.shape[0]
    e_mu = mu.sum(dim=0) / b
    cov = mu.T @ mu / b - torch.outer(e_mu, e_mu)
    if variant == "ii":
        cov = cov + torch.diag(torch.exp(logvar).sum(dim=0) / b)
    diagonal = torch.diagonal(cov)
    return lambda_od * (cov.square().sum() - diagonal.square().sum()) + lambda_d * (diagonal - 1).square().sum()


@pytest.mark.parametrize("variant", ["i", "ii"])
def test_composed_dip_covariance_and_regulariser_match_textbook_float64(variant):
    """The public plain-op forms, dip_regulariser(dip_covariance(...)) (the composed baseline of
    bench/test_dip_regulariser.py), against the textbook in float64: the population covariance
    (/B), not the sample one."""
    g = torch.Generator().manual_seed(11)
    mu = torch.randn(50, 5, generator=g, dtype=F64).mul(1.3).add(0.4)
    logvar = torch.randn(50, 5, generator=g, dtype=F64).mul(0.6)
    got = fastfvae.losses.dip_regulariser(fastfvae.losses.dip_covariance(mu, logvar, variant), 3.0, 7.0)
    torch.testing.assert_close(got, vectorised_textbook_dip(mu, logvar, variant, 3.0, 7.0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", ["i", "ii"])
@pytest.mark.parametrize("b, d", [(20000, 8), (9000, 1)])
def test_dip_penalty_over_several_row_chunks_matches_float64(variant, b, d, monkeypatch):
    """Batches taller than one of dip_penalty's chunks, made 64 K elements here (8192 rows at
    D = 8, 65536 at D = 1, the last chunk partial) so that a batch small enough for float32's
    sums to meet these tolerances crosses several: float32 value and gradients against float64
    autograd."""
    monkeypatch.setattr(fastfvae.dip_penalty, "_DIP_CHUNK_ELEMENTS", 1 << 16)
    g = torch.Generator().manual_seed(b + d)
    mu = torch.randn(b, d, generator=g).mul(1.5).add(0.3).requires_grad_()
    logvar = torch.randn(b, d, generator=g).mul(0.7).requires_grad_()
    got = fastfvae.losses.dip_penalty(mu, logvar, variant, 3.0, 7.0)
    mu64, logvar64 = (t.detach().to(F64).requires_grad_() for t in (mu, logvar))
    want = vectorised_textbook_dip(mu64, logvar64, variant, 3.0, 7.0)
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(got, (mu, logvar), allow_unused=True)
    grads64 = torch.autograd.grad(want, (mu64, logvar64), allow_unused=True)
    torch.testing.assert_close(grads[0], grads64[0].float(), rtol=1e-4, atol=1e-7)
    if variant == "ii":
        torch.testing.assert_close(grads[1], grads64[1].float(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("variant", ["i", "ii"])
def test_dip_penalty_of_float32_codes_far_from_zero_keeps_its_precision(variant):
    """Codes of spread ~1 around 1000 in float32: the shifted covariance keeps ~5 digits, where
    E[mu mu^T] - E[mu] E[mu]^T in float32 would lose them all to cancellation (1e6 - 1e6)."""
    g = torch.Generator().manual_seed(3)
    mu = (torch.randn(4096, 6, generator=g) + 1000.0).requires_grad_()
    logvar = torch.randn(4096, 6, generator=g).mul(0.3).requires_grad_()
    got = fastfvae.losses.dip_penalty(mu, logvar, variant, 2.0, 5.0)
    mu64, logvar64 = (t.detach().to(F64).requires_grad_() for t in (mu, logvar))
    centred = mu64 - mu64.mean(dim=0)
    want = vectorised_textbook_dip(centred, logvar64, variant, 2.0, 5.0)  # Cov is shift-invariant
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-4)
    (grad_mu,) = torch.autograd.grad(got, (mu,))
    (grad_mu64,) = torch.autograd.grad(want, (mu64,))
    torch.testing.assert_close(grad_mu, grad_mu64.float(), rtol=1e-3, atol=1e-6)


def test_dip_penalty_checks_its_arguments():
    mu = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"logvar: expected mu's shape \(5, 3\)"):
        fastfvae.losses.dip_penalty(mu, torch.randn(5, 4), "i", 1.0, 1.0)
    with pytest.raises(ValueError, match="variant: expected one of"):
        fastfvae.losses.dip_penalty(mu, mu, "iii", 1.0, 1.0)
    with pytest.raises(ValueError, match="B >= 2"):
        fastfvae.losses.dip_penalty(mu[:1], mu[:1], "i", 1.0, 1.0)


@pytest.mark.parametrize("variant", ["i", "ii"])
def test_dip_total_is_recon_plus_kl_plus_dip(variant):
    g = torch.Generator().manual_seed(5)
    x_recon, x, mu, logvar = random_batch(6, 4, g)
    kl = torch.tensor(3.25, dtype=F64, requires_grad=True)
    out = DIPVAELoss(variant, lambda_od=2.0)(x_recon, x, kl, mu, logvar)
    assert out._fields == ("total", "recon", "kl", "dip")
    recon = F.binary_cross_entropy_with_logits(x_recon, x, reduction="sum") / 6
    torch.testing.assert_close(out.recon, recon)
    assert out.kl is kl
    torch.testing.assert_close(out.total, recon + kl + out.dip)
    out.total.backward()
    torch.testing.assert_close(kl.grad, torch.tensor(1.0, dtype=F64))


@pytest.mark.parametrize("variant", ["i", "ii"])
def test_dip_gradcheck(variant):
    g = torch.Generator().manual_seed(11)
    x_recon, x, mu, logvar = random_batch(5, 3, g)
    kl = torch.tensor(1.5, dtype=F64, requires_grad=True)
    loss = DIPVAELoss(variant, lambda_od=2.0, lambda_d=5.0)
    assert torch.autograd.gradcheck(lambda *a: loss(a[0], x, a[1], a[2], a[3]).total,
                                    (x_recon, kl, mu, logvar))


@pytest.mark.parametrize("variant", ["i", "ii"])
def test_dip_b2_is_the_outer_product_of_the_difference(variant):
    """For two samples Cov[mu] = (mu_1 - mu_2)(mu_1 - mu_2)^T / 4."""
    g = torch.Generator().manual_seed(2)
    x_recon, x, mu, logvar = random_batch(2, 3, g)
    diff = (mu[0] - mu[1]).detach()
    cov = torch.outer(diff, diff) / 4
    if variant == "ii":
        cov = cov + torch.diag(logvar.detach().exp().mean(dim=0))
    off = cov - torch.diag(torch.diagonal(cov))
    expected = 4.0 * off.pow(2).sum() + 9.0 * (torch.diagonal(cov) - 1).pow(2).sum()
    out = DIPVAELoss(variant, lambda_od=4.0, lambda_d=9.0)(x_recon, x, torch.tensor(0.0, dtype=F64), mu, logvar)
    torch.testing.assert_close(out.dip, expected, rtol=1e-12, atol=1e-12)


def whitened_means(b, d, generator, scale=1.0):
    """(b, d) float64 whose batch covariance (/b) is scale * I exactly (to rounding), with a
    non-zero mean: centred orthonormal columns times sqrt(b * scale), plus an offset."""
    a = torch.randn(b, d, generator=generator, dtype=F64)
    q, _ = torch.linalg.qr(a - a.mean(dim=0))  # columns orthonormal and orthogonal to ones
    return q * (b * scale) ** 0.5 + torch.randn(1, d, generator=generator, dtype=F64)


def test_dip_i_is_zero_for_identity_covariance():
    g = torch.Generator().manual_seed(7)
    mu = whitened_means(16, 4, g).requires_grad_()
    logvar = torch.randn(16, 4, generator=g, dtype=F64)  # DIP-I ignores it
    x = torch.rand(16, 1, 2, 2, dtype=F64)
    out = DIPVAELoss("i", lambda_od=50.0)(x, x, torch.tensor(0.0, dtype=F64), mu, logvar)
    torch.testing.assert_close(out.dip, torch.tensor(0.0, dtype=F64), rtol=0, atol=1e-24)
    # At the minimum the regulariser's gradient vanishes too.
    (grad,) = torch.autograd.grad(out.dip, mu)
    torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-12)


def test_dip_ii_is_zero_when_cov_mu_plus_mean_variance_is_identity():
    g = torch.Generator().manual_seed(8)
    mu = whitened_means(16, 4, g, scale=0.5)
    logvar = torch.full((16, 4), 0.5, dtype=F64).log()  # E[diag(exp(logvar))] = 0.5 I
    x = torch.rand(16, 1, 2, 2, dtype=F64)
    out = DIPVAELoss("ii", lambda_od=50.0)(x, x, torch.tensor(0.0, dtype=F64), mu, logvar)
    torch.testing.assert_close(out.dip, torch.tensor(0.0, dtype=F64), rtol=0, atol=1e-24)
    # The same means under DIP-I have covariance I/2: lambda_d * D * (1/2)^2, lambda_d = 10 * 50.
    out_i = DIPVAELoss("i", lambda_od=50.0)(x, x, torch.tensor(0.0, dtype=F64), mu, logvar)
    torch.testing.assert_close(out_i.dip, torch.tensor(500.0 * 4 * 0.25, dtype=F64))


def test_dip_b1_raises():
    mu, logvar = torch.randn(1, 4), torch.randn(1, 4)
    x = torch.rand(1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"mu: expected a batch of B >= 2.*\(1, 4\)"):
        DIPVAELoss("ii")(x, x, torch.tensor(0.0), mu, logvar)


def test_dip_defaults_are_disentanglement_libs_study():
    assert DIPVAELoss("i").lambda_od == 10.0 and DIPVAELoss("i").lambda_d == 100.0
    assert DIPVAELoss("ii").lambda_od == 10.0 and DIPVAELoss("ii").lambda_d == 10.0
    assert DIPVAELoss("i", lambda_od=2.0).lambda_d == 20.0
    assert DIPVAELoss("ii", lambda_od=2.0).lambda_d == 2.0
    assert DIPVAELoss("i", lambda_od=2.0, lambda_d=3.0).lambda_d == 3.0


def test_dip_float32_and_promotion():
    g = torch.Generator().manual_seed(3)
    x_recon, x, mu, logvar = random_batch(8, 5, g, dtype=torch.float32)
    kl = fastfvae.reparameterize_kl(mu, logvar)[1]
    out = DIPVAELoss("ii")(x_recon, x, kl, mu, logvar)
    assert out.total.dtype == out.dip.dtype == torch.float32
    expected = textbook_dip(mu.detach().double(), logvar.detach().double(), "ii", 10.0, 10.0)
    torch.testing.assert_close(out.dip.double(), expected, rtol=1e-5, atol=1e-4)
    # bfloat16 mu with float32 logvar: promoted to float32 (as BetaTCVAELoss does)
    mixed = DIPVAELoss("ii")(x_recon, x, kl, mu.detach().bfloat16(), logvar.detach())
    assert mixed.dip.dtype == torch.float32


def test_dip_bad_input():
    x, mu, logvar, kl = torch.rand(4, 1, 2, 2), torch.randn(4, 3), torch.randn(4, 3), torch.tensor(1.0)
    loss = DIPVAELoss()
    with pytest.raises(ValueError, match="variant: expected one of"):
        DIPVAELoss("iii")
    with pytest.raises(ValueError, match="lambda_od: expected a finite number >= 0, got -1"):
        DIPVAELoss(lambda_od=-1)
    with pytest.raises(TypeError, match="lambda_d: expected a real number, got str"):
        DIPVAELoss(lambda_d="10")
    with pytest.raises(ValueError, match="reconstruction: expected one of"):
        DIPVAELoss(reconstruction="laplace")
    with pytest.raises(ValueError, match=r"kl: expected a scalar tensor.*\(4,\)"):
        loss(x, x, torch.ones(4), mu, logvar)
    with pytest.raises(ValueError, match=r"mu: expected a 2-D tensor, got shape \(4, 3, 1\)"):
        loss(x, x, kl, mu[..., None], logvar)
    with pytest.raises(ValueError, match=r"logvar: expected the shape of mu \(4, 3\), got \(4, 2\)"):
        loss(x, x, kl, mu, logvar[:, :2])
    with pytest.raises(TypeError, match="mu: expected a floating dtype"):
        loss(x, x, kl, mu.long(), logvar)
    with pytest.raises(ValueError, match="x: expected the shape of x_recon"):
        loss(x, x[:3], kl, mu, logvar)
    with pytest.raises(ValueError, match=r"mu: expected x_recon's batch size 4 rows, got shape \(3, 3\)"):
        loss(x, x, kl, mu[:3], logvar[:3])


# --------------------------------------------------------------------------------------------
# AnnealedVAE
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("step", [0, 1, 37, 99, 100, 101, 10**6])
def test_annealed_matches_textbook_float64(step):
    g = torch.Generator().manual_seed(step % 1000)
    x_recon, x, mu, logvar = random_batch(5, 3, g)
    kl = fastfvae.reparameterize_kl(mu, logvar)[1]
    out = AnnealedVAELoss(gamma=30.0, c_max=2.0, iteration_threshold=100)(x_recon, x, kl, step)
    assert out._fields == ("total", "recon", "kl", "capacity")
    kl_t = kl.detach().clone().requires_grad_()
    regulariser = textbook_annealed(kl_t, step, 30.0, 2.0, 100)
    recon = F.binary_cross_entropy_with_logits(x_recon, x, reduction="sum") / 5
    torch.testing.assert_close(out.capacity, torch.tensor(min(2.0, 2.0 * step / 100), dtype=F64))
    torch.testing.assert_close(out.total, recon + regulariser, rtol=1e-12, atol=1e-12)
    (grad_ours,) = torch.autograd.grad(out.total, kl)
    (grad_text,) = torch.autograd.grad(regulariser, kl_t)
    torch.testing.assert_close(grad_ours, grad_text)


def test_annealed_step_zero_and_past_threshold():
    x = torch.rand(4, 1, 3, 3, dtype=F64)
    x_recon = torch.randn(4, 1, 3, 3, dtype=F64)
    recon = reconstruction_loss(x_recon, x)
    kl = torch.tensor(10.0, dtype=F64, requires_grad=True)
    loss = AnnealedVAELoss()  # gamma 1000, c_max 25, iteration_threshold 100000
    at_zero = loss(x_recon, x, kl, 0)
    torch.testing.assert_close(at_zero.capacity, torch.tensor(0.0, dtype=F64))
    torch.testing.assert_close(at_zero.total, recon + 1000.0 * 10.0)  # gamma * KL: a beta-VAE with beta = gamma
    (grad,) = torch.autograd.grad(at_zero.total, kl)
    assert grad.item() == 1000.0
    for step in (100000, 100001, 5 * 100000):
        past = loss(x_recon, x, kl, step)
        torch.testing.assert_close(past.capacity, torch.tensor(25.0, dtype=F64))
        torch.testing.assert_close(past.total, recon + 1000.0 * 15.0)
        (grad,) = torch.autograd.grad(past.total, kl)
        assert grad.item() == -1000.0  # KL below capacity: pushed up
    halfway = loss(x_recon, x, kl, 50000)
    torch.testing.assert_close(halfway.capacity, torch.tensor(12.5, dtype=F64))


def test_annealed_defaults_and_dtype_device():
    loss = AnnealedVAELoss()
    assert (loss.gamma, loss.c_max, loss.iteration_threshold) == (1000.0, 25.0, 100000)
    x = torch.rand(2, 4)
    kl = torch.tensor(1.0, dtype=torch.bfloat16)
    out = loss(torch.randn(2, 4), x, kl, 3)
    # a 16-bit kl: the terms in float32, as the ops' reductions (DESIGN.md §2)
    assert out.capacity.dtype == torch.float32 and out.kl.dtype == torch.float32 and out.capacity.device == kl.device
    assert out.total.dtype == torch.float32  # recon in float32, promoted like FactorVAELoss's sum


def test_annealed_bad_input():
    x, kl = torch.rand(2, 4), torch.tensor(1.0)
    loss = AnnealedVAELoss()
    with pytest.raises(ValueError, match="step: expected an int >= 0, got -1"):
        loss(x, x, kl, -1)
    with pytest.raises(TypeError, match="step: expected an int .*got float"):
        loss(x, x, kl, 1.0)
    with pytest.raises(TypeError, match="step: expected an int .*got bool"):
        loss(x, x, kl, True)
    with pytest.raises(ValueError, match=r"kl: expected a scalar tensor.*\(2,\)"):
        loss(x, x, torch.ones(2), 0)
    with pytest.raises(TypeError, match=r"step: expected an int or a 0-d real tensor.*shape \(2,\)"):
        loss(x, x, kl, torch.tensor([3, 4]))
    with pytest.raises(ValueError, match="iteration_threshold: expected an int >= 1, got 0"):
        AnnealedVAELoss(iteration_threshold=0)
    with pytest.raises(ValueError, match="iteration_threshold: expected an int >= 1, got 100000.0"):
        AnnealedVAELoss(iteration_threshold=1e5)
    # NumPy integers count as ints (a loop over np.arange)
    import numpy as np
    out = AnnealedVAELoss(c_max=10.0, iteration_threshold=np.int64(4))(x, x, kl, np.int64(2))
    assert out.capacity.item() == 5.0
    with pytest.raises(ValueError, match="c_max: expected a finite number >= 0, got inf"):
        AnnealedVAELoss(c_max=float("inf"))
    with pytest.raises(ValueError, match="gamma: expected a finite number >= 0"):
        AnnealedVAELoss(gamma=float("nan"))


# --------------------------------------------------------------------------------------------
# beta-TCVAE's default estimator: the documented MWS offsets on overlapping posteriors
# --------------------------------------------------------------------------------------------
def test_betatcvae_mws_offsets_on_an_untrained_model_are_as_documented():
    from fastfvae.losses import BetaTCVAELoss

    b, d, n = 64, 6, 4096
    g = torch.Generator().manual_seed(0)
    mu = 1e-3 * torch.randn(b, d, generator=g, dtype=F64)  # every posterior ~ N(0, I): all overlap
    logvar = 1e-3 * torch.randn(b, d, generator=g, dtype=F64)
    z = mu + torch.exp(logvar / 2) * torch.randn(b, d, generator=g, dtype=F64)
    x = torch.rand(b, 4, dtype=F64)
    log_n = torch.log(torch.tensor(float(n), dtype=F64))
    assert BetaTCVAELoss(dataset_size=n).method == "mws"
    mws = BetaTCVAELoss(dataset_size=n)(x, x, z, mu, logvar)
    mss = BetaTCVAELoss(dataset_size=n, method="mss")(x, x, z, mu, logvar)
    torch.testing.assert_close(mws.mi, log_n, atol=0.01, rtol=0)
    torch.testing.assert_close(mws.tc, (d - 1) * log_n, atol=0.01, rtol=0)  # 41.6
    torch.testing.assert_close(mws.dwkl, -d * log_n, atol=0.01, rtol=0)
    for term in (mss.mi, mss.tc, mss.dwkl):
        assert abs(term.item()) < 0.01
    torch.testing.assert_close(mws.mi + mws.tc + mws.dwkl, mss.mi + mss.tc + mss.dwkl)


# --------------------------------------------------------------------------------------------
# torch.compile (DESIGN.md §6): the losses trace whole; AnnealedVAE's step does not recompile
# every step
# --------------------------------------------------------------------------------------------
def test_family_losses_compile_fullgraph_and_match_eager():
    from torch._dynamo.testing import CompileCounterWithBackend

    g = torch.Generator().manual_seed(21)
    x_recon, x, mu, logvar = random_batch(8, 3, g, dtype=torch.float32)
    eps = torch.randn(8, 3, generator=g)
    dip, annealed = DIPVAELoss("ii", lambda_od=2.0), AnnealedVAELoss(gamma=10.0, c_max=3.0, iteration_threshold=4)

    def dip_total(x_recon, mu, logvar):
        kl = fastfvae.reparameterize_kl(mu, logvar, eps=eps)[1]
        return dip(x_recon, x, kl, mu, logvar).total

    def annealed_total(x_recon, mu, logvar, step):
        kl = fastfvae.reparameterize_kl(mu, logvar, eps=eps)[1]
        return annealed(x_recon, x, kl, step).total

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    for fn, extra in ((dip_total, [()]), (annealed_total, [(s,) for s in range(7)])):
        compiled = torch.compile(fn, fullgraph=True, backend=counter)
        for args in extra:
            inputs = [t.detach().clone().requires_grad_() for t in (x_recon, mu, logvar)]
            expected = fn(*inputs, *args)
            grads = torch.autograd.grad(expected, inputs)
            actual = compiled(*inputs, *args)
            torch.testing.assert_close(actual, expected)
            for a, e in zip(torch.autograd.grad(actual, inputs), grads):
                torch.testing.assert_close(a, e)
    # dip: one graph; annealed: a static step 0, then one dynamic-step graph (at most one more
    # where the capacity stops rising), not one per step.
    assert counter.frame_count <= 4, counter.frame_count


def test_annealed_tensor_step_gives_the_int_steps_schedule():
    """A device step tensor (the trainer's, graph-safe) follows the same capacity as int steps."""
    g = torch.Generator().manual_seed(4)
    x_recon, x, mu, logvar = random_batch(3, 2, g)
    kl = torch.tensor(0.7, dtype=F64)
    loss = AnnealedVAELoss(gamma=3.0, c_max=2.0, iteration_threshold=5)
    step = torch.zeros((), dtype=torch.int64)
    for k in range(8):
        by_int, by_tensor = loss(x_recon, x, kl, k), loss(x_recon, x, kl, step)
        torch.testing.assert_close(by_tensor.capacity, by_int.capacity, rtol=0, atol=1e-15)
        torch.testing.assert_close(by_tensor.total, by_int.total, rtol=0, atol=1e-12)
        step.add_(1)
    assert loss(x_recon, x, kl, torch.tensor(-3)).capacity.item() == 0.0
