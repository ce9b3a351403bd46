"""BetaTCVAELoss and BetaVAELoss against an independent, materialised beta-TCVAE
written here with torch.distributions (the B x B x D matrix of log q(z_i | x_j), as the
original code computes it, with the MSS weights placed by index)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal

from fastfvae import losses, reparameterize_kl
from conftest import require


def materialised_terms(z, mu, logvar, dataset_size, method):
    """(log q(z|x), log q(z), log prod_d q(z_d), log p(z)), each (B,), from the full matrix."""
    b = z.shape[0]
    std = torch.exp(0.5 * logvar)
    log_q_cond = Normal(mu.unsqueeze(0), std.unsqueeze(0)).log_prob(z.unsqueeze(1))  # [i, j, d]
    if method == "mws":
        log_w = torch.full((b, b), -math.log(dataset_size * b), dtype=z.dtype)
    else:
        n, m = dataset_size, b - 1
        w = torch.full((b, b), 1.0 / m, dtype=z.dtype)
        for i in range(b):
            w[i, (i + 1) % b] = (n - m) / (n * m)
            w[i, i] = 1.0 / n
        log_w = w.log()
    log_qz = torch.logsumexp(log_q_cond.sum(2) + log_w, dim=1)
    log_prod = torch.logsumexp(log_q_cond + log_w.unsqueeze(2), dim=1).sum(1)
    log_q_zx = Normal(mu, std).log_prob(z).sum(1)
    log_pz = Normal(torch.zeros_like(z), torch.ones_like(z)).log_prob(z).sum(1)
    return log_q_zx, log_qz, log_prod, log_pz


def _batch(b=12, d=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, 4, 4, generator=g, dtype=dtype)
    x_recon = torch.randn(b, 1, 4, 4, generator=g, dtype=dtype)
    mu = torch.randn(b, d, generator=g, dtype=dtype)
    logvar = torch.randn(b, d, generator=g, dtype=dtype) * 0.5 - 1.0
    eps = torch.randn(b, d, generator=g, dtype=dtype)
    return x_recon, x, mu, logvar, eps


@pytest.mark.parametrize("method", ["mws", "mss"])
def test_beta_tcvae_matches_the_materialised_estimator(backend, method):
    require(backend, "log_qz", "cpu", torch.float64)
    x_recon, x, mu, logvar, eps = _batch()
    leaves = [t.clone().requires_grad_() for t in (x_recon, mu, logvar)]
    loss_fn = losses.BetaTCVAELoss(alpha=0.7, beta=6.0, gamma=1.3, dataset_size=500, method=method, backend=backend)
    z, _ = reparameterize_kl(leaves[1], leaves[2], eps=eps, backend="reference")
    out = loss_fn(leaves[0], x, z, leaves[1], leaves[2])
    out.total.backward()

    ref_leaves = [t.clone().requires_grad_() for t in (x_recon, mu, logvar)]
    z_ref = ref_leaves[1] + torch.exp(0.5 * ref_leaves[2]) * eps
    log_q_zx, log_qz, log_prod, log_pz = materialised_terms(z_ref, ref_leaves[1], ref_leaves[2], 500, method)
    recon = F.binary_cross_entropy_with_logits(ref_leaves[0], x, reduction="sum") / x.shape[0]
    mi, tc, dwkl = (log_q_zx - log_qz).mean(), (log_qz - log_prod).mean(), (log_prod - log_pz).mean()
    total = recon + 0.7 * mi + 6.0 * tc + 1.3 * dwkl
    total.backward()
    for name, got, want in [("total", out.total, total), ("recon", out.recon, recon), ("mi", out.mi, mi),
                            ("tc", out.tc, tc), ("dwkl", out.dwkl, dwkl)]:
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=name)
    for got, want in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-9, atol=1e-10)


def test_terms_split_the_batch_kl_estimate():
    """mi + tc + dwkl = mean_i (log q(z_i|x_i) - log p(z_i)), whatever the estimator."""
    x_recon, x, mu, logvar, eps = _batch(b=9, d=3, seed=2)
    z = mu + torch.exp(0.5 * logvar) * eps
    for method in ("mws", "mss"):
        out = losses.BetaTCVAELoss(dataset_size=100, method=method)(x_recon, x, z, mu, logvar)
        kl_mc = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(1) - Normal(0.0, 1.0).log_prob(z).sum(1)
        torch.testing.assert_close(out.mi + out.tc + out.dwkl, kl_mc.mean(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.total, out.recon + out.mi + 6.0 * out.tc + out.dwkl)


def test_beta_tcvae_float32_and_mixed_dtypes_and_gaussian_reconstruction():
    x_recon, x, mu, logvar, eps = _batch(b=8, d=4, seed=3, dtype=torch.float32)
    z = (mu + torch.exp(0.5 * logvar) * eps).to(torch.bfloat16)  # z from an autocast region
    out = losses.BetaTCVAELoss(dataset_size=1000, reconstruction="gaussian")(x_recon, x, z, mu, logvar)
    assert out.total.dtype == torch.float32
    want = materialised_terms(z.float().double(), mu.double(), logvar.double(), 1000, "mws")
    torch.testing.assert_close(out.tc.double(), (want[1] - want[2]).mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.recon, F.mse_loss(x_recon, x, reduction="sum") / 8)


def test_beta_vae_loss():
    x_recon, x, mu, logvar, eps = _batch(b=6, d=3, seed=4)
    mu.requires_grad_()
    _, kl = reparameterize_kl(mu, logvar, eps=eps)
    out = losses.BetaVAELoss(beta=4.0)(x_recon, x, kl)
    recon = F.binary_cross_entropy_with_logits(x_recon, x, reduction="sum") / 6
    torch.testing.assert_close(out.recon, recon)
    torch.testing.assert_close(out.total, recon + 4.0 * kl)
    out.total.backward()
    torch.testing.assert_close(mu.grad, 4.0 * mu.detach() / 6)  # d(4 * mean_i kl_i)/dmu = 4 mu / B
    with pytest.raises(ValueError, match="kl: expected a scalar"):
        losses.BetaVAELoss()(x_recon, x, torch.zeros(6))


@pytest.mark.parametrize("kwargs, error, word", [
    (dict(dataset_size=0), ValueError, "dataset_size"),
    (dict(dataset_size=10, method="mss2"), ValueError, "method"),
    (dict(dataset_size=10, reconstruction="laplace"), ValueError, "reconstruction"),
])
def test_beta_tcvae_bad_arguments(kwargs, error, word):
    with pytest.raises(error, match=word):
        losses.BetaTCVAELoss(**kwargs)


def test_beta_tcvae_bad_shapes():
    x_recon, x, mu, logvar, eps = _batch(b=6, d=3)
    loss_fn = losses.BetaTCVAELoss(dataset_size=100)
    with pytest.raises(ValueError, match="z: expected the shape of mu"):
        loss_fn(x_recon, x, torch.zeros(5, 3, dtype=torch.float64), mu, logvar)
    with pytest.raises(ValueError, match="logvar"):
        loss_fn(x_recon, x, mu, mu, logvar[:, :2])
    with pytest.raises(ValueError, match="dataset_size"):  # mss needs N >= B
        losses.BetaTCVAELoss(dataset_size=4, method="mss")(x_recon, x, mu, mu, logvar)


def test_beta_tcvae_compiles_without_graph_breaks(backend):
    if backend == "triton":
        pytest.skip("Triton under TRITON_INTERPRET=1 cannot be traced with fake tensors (DESIGN.md §6)")
    require(backend, "log_qz", "cpu", torch.float32)
    x_recon, x, mu, logvar, eps = _batch(b=8, d=3, seed=5, dtype=torch.float32)
    loss_fn = losses.BetaTCVAELoss(dataset_size=100, method="mss", backend=backend)
    compiled = torch.compile(lambda *a: loss_fn(*a).total, fullgraph=True, backend="aot_eager")
    z = mu + torch.exp(0.5 * logvar) * eps
    torch.testing.assert_close(compiled(x_recon, x, z, mu, logvar), loss_fn(x_recon, x, z, mu, logvar).total)
