"""Bad input raises TypeError/ValueError naming the argument, expected and actual (DESIGN.md §7),
before any kernel runs, on every backend."""
from __future__ import annotations

import pytest
import torch

import fastfvae

GOOD = torch.randn(4, 3)


def _raises(error, match, fn, *args, **kwargs):
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)


@pytest.mark.parametrize("requested", ["auto", "reference", "native"])
def test_reparameterize_kl(requested):
    f = fastfvae.reparameterize_kl
    _raises(TypeError, r"mu: expected a torch.Tensor, got list", f, [[1.0]], GOOD, backend=requested)
    _raises(TypeError, r"mu: expected a floating dtype .* got torch.int64", f, torch.ones(4, 3, dtype=torch.long), GOOD, backend=requested)
    _raises(TypeError, r"logvar: expected a floating dtype .* got torch.complex64", f, GOOD, torch.ones(4, 3, dtype=torch.complex64), backend=requested)
    _raises(ValueError, r"mu: expected a 2-D tensor, got shape \(12,\)", f, torch.randn(12), torch.randn(12), backend=requested)
    _raises(ValueError, r"logvar: expected the shape of mu \(4, 3\), got \(4, 2\)", f, GOOD, torch.randn(4, 2), backend=requested)
    _raises(ValueError, r"logvar: expected a tensor on mu's device cpu, got meta", f, GOOD, torch.empty(4, 3, device="meta"), backend=requested)
    _raises(ValueError, r"eps: expected the shape of mu \(4, 3\), got \(3, 4\)", f, GOOD, GOOD, eps=torch.randn(3, 4), backend=requested)
    _raises(ValueError, r"mu: expected a non-empty tensor \(B >= 1\), got shape \(0, 3\)", f, torch.randn(0, 3), torch.randn(0, 3), backend=requested)
    _raises(ValueError, r"reduction: expected one of \('mean', 'sum', 'none'\), got 'avg'", f, GOOD, GOOD, reduction="avg", backend=requested)


@pytest.mark.parametrize("requested", ["auto", "reference", "native"])
def test_permute_dims(requested):
    f = fastfvae.permute_dims
    _raises(TypeError, r"z: expected a torch.Tensor, got ndarray", f, GOOD.numpy(), backend=requested)
    _raises(TypeError, r"z: expected a floating dtype .* got torch.int32", f, torch.ones(4, 3, dtype=torch.int32), backend=requested)
    _raises(ValueError, r"z: expected a 2-D or 3-D tensor, got shape \(4,\)", f, torch.randn(4), backend=requested)
    _raises(ValueError, r"z: expected a 2-D or 3-D tensor, got shape \(1, 2, 3, 4\)", f, torch.randn(1, 2, 3, 4), backend=requested)
    _raises(ValueError, r"z: expected a non-empty tensor \(B >= 1\), got shape \(0, 5\)", f, torch.randn(0, 5), backend=requested)
    _raises(ValueError, r"z: expected a non-empty tensor \(B >= 1\), got shape \(2, 0, 5\)", f, torch.randn(2, 0, 5), backend=requested)


@pytest.mark.parametrize("requested", ["auto", "reference", "native"])
def test_tc_loss(requested):
    f = fastfvae.tc_loss
    _raises(ValueError, r"d_logits: expected discriminator logits of shape \(B, 2\), \(B, 1\) or \(B,\), got \(5, 3\)", f, torch.randn(5, 3), backend=requested)
    _raises(ValueError, r"d_logits: expected a 1-D or 2-D tensor, got shape \(2, 2, 2\)", f, torch.randn(2, 2, 2), backend=requested)
    _raises(TypeError, r"d_logits: expected a floating dtype", f, torch.ones(5, 2, dtype=torch.bool), backend=requested)
    _raises(ValueError, r"d_logits: expected a non-empty tensor", f, torch.randn(0, 2), backend=requested)


@pytest.mark.parametrize("requested", ["auto", "reference", "native"])
def test_discriminator_loss(requested):
    f = fastfvae.discriminator_loss
    _raises(ValueError, r"d_real: expected discriminator logits .* got \(5, 3\)", f, torch.randn(5, 3), torch.randn(5, 3), backend=requested)
    _raises(ValueError, r"d_perm: expected the shape of d_real \(5, 2\), got \(4, 2\)", f, torch.randn(5, 2), torch.randn(4, 2), backend=requested)
    _raises(ValueError, r"d_perm: expected the shape of d_real \(5, 2\), got \(5,\)", f, torch.randn(5, 2), torch.randn(5), backend=requested)
    _raises(ValueError, r"d_perm: expected a tensor on d_real's device cpu, got meta", f, torch.randn(5, 2), torch.empty(5, 2, device="meta"), backend=requested)
    _raises(TypeError, r"d_real: expected a torch.Tensor, got float", f, 1.0, torch.randn(5, 2), backend=requested)


def test_unknown_backend_names_the_choices():
    _raises(ValueError, r"backend: expected one of \('auto', 'native', 'triton', 'reference'\), got 'cuda'", fastfvae.tc_loss, torch.randn(3, 2), backend="cuda")


def test_losses_modules_validate():
    loss = fastfvae.losses.FactorVAELoss(gamma=10.0)
    x = torch.rand(2, 1, 8, 8)
    _raises(ValueError, r"kl: expected a scalar tensor", loss, torch.randn(2, 1, 8, 8), x, torch.randn(2), torch.randn(2, 2))
    _raises(ValueError, r"x: expected the shape of x_recon \(2, 1, 8, 8\), got \(2, 1, 8, 7\)", loss, torch.randn(2, 1, 8, 8), torch.rand(2, 1, 8, 7), torch.tensor(1.0), torch.randn(2, 2))
    _raises(ValueError, r"reconstruction: expected one of \('bernoulli', 'gaussian'\), got 'laplace'", fastfvae.losses.FactorVAELoss, reconstruction="laplace")


def test_numpy_integers_are_integers():
    """issue 14.15: dataset_size=np.int64(10) is an int as far as the user is concerned."""
    np = pytest.importorskip("numpy")
    z = torch.randn(5, 3)
    got = fastfvae.log_qz(z, z, z, dataset_size=np.int64(10))
    torch.testing.assert_close(got, fastfvae.log_qz(z, z, z, dataset_size=10))
    assert fastfvae.losses.BetaTCVAELoss(dataset_size=np.int32(100)).dataset_size == 100
    for bad in (2.5, "10", True, np.float64(10.0), torch.tensor(10)):
        _raises(ValueError, r"dataset_size: expected an int >= 1", fastfvae.log_qz, z, z, z, dataset_size=bad)
    _raises(ValueError, r"dataset_size: expected an int >= 1, got np.int64\(0\)", fastfvae.log_qz, z, z, z, dataset_size=np.int64(0))


def test_loss_modules_refuse_a_batch_that_is_not_x_recon_s():
    """issue 14.15: logits or z from another batch size than x are refused, naming the argument."""
    x = torch.rand(4, 1, 8, 8)
    x_recon = torch.randn(4, 1, 8, 8)
    kl = torch.tensor(1.0)
    loss = fastfvae.losses.FactorVAELoss()
    loss(x_recon, x, kl, torch.randn(4, 2))  # the right batch works
    _raises(ValueError, r"d_z: expected the batch size of x_recon B = 4, got shape \(5, 2\)", loss, x_recon, x, kl, torch.randn(5, 2))
    _raises(ValueError, r"d_z: expected the batch size of x_recon B = 4, got shape \(3,\)", loss, x_recon, x, kl, torch.randn(3))
    tcvae = fastfvae.losses.BetaTCVAELoss(dataset_size=100)
    z = torch.randn(4, 3)
    tcvae(x_recon, x, z, z, z)
    z5 = torch.randn(5, 3)
    _raises(ValueError, r"z: expected the batch size of x_recon B = 4, got shape \(5, 3\)", tcvae, x_recon, x, z5, z5, z5)


# ---------------------------------------------------------------------------- mixed dtypes (17.2)
MIXED = [(torch.bfloat16, torch.float32), (torch.float16, torch.bfloat16), (torch.float32, torch.float64),
         (torch.float16, torch.float32)]


@pytest.mark.parametrize("first, second", MIXED, ids=str)
@pytest.mark.parametrize("requested", ["auto", "reference"])
def test_mixed_dtypes_promote_as_torch_binary_ops(first, second, requested):
    """Mixed float inputs compute in torch.promote_types of them (as mu + logvar would) and each
    input's gradient comes back in its own dtype."""
    common = torch.promote_types(first, second)
    reduced = fastfvae.reference.compute_dtype(common)
    g = torch.Generator().manual_seed(3)
    a = torch.randn(6, 4, generator=g).to(first).requires_grad_()
    b = torch.randn(6, 4, generator=g).to(second).requires_grad_()
    eps = torch.randn(6, 4, generator=g).to(second)

    z, kl = fastfvae.reparameterize_kl(a, b, eps=eps, backend=requested)
    z_same, kl_same = fastfvae.reparameterize_kl(a.detach().to(common), b.detach().to(common), eps=eps.to(common), backend=requested)
    assert z.dtype == common and kl.dtype == reduced
    assert torch.equal(z, z_same) and torch.equal(kl, kl_same)
    (z.float().sum() + kl).backward()
    assert a.grad.dtype == first and b.grad.dtype == second

    loss = fastfvae.discriminator_loss(a[:, :2], b[:, :2], backend=requested)
    assert loss.dtype == reduced
    assert torch.equal(loss, fastfvae.discriminator_loss(a[:, :2].to(common), b[:, :2].to(common), backend=requested))

    log_qz, log_prod = fastfvae.log_qz(a, b, b, dataset_size=50, backend=requested)
    want = fastfvae.log_qz(a.to(common), b.to(common), b.to(common), dataset_size=50, backend=requested)
    assert log_qz.dtype == reduced and torch.equal(log_qz, want[0]) and torch.equal(log_prod, want[1])


def test_reductions_of_16_bit_inputs_are_float32_and_accurate():
    """issue 17.3: the KL and the losses of bfloat16 inputs come back in float32, equal to the
    float32 computation on the same (rounded) values; z stays bfloat16."""
    g = torch.Generator().manual_seed(0)
    mu = (torch.randn(64, 10, generator=g) * 2).bfloat16()
    logvar = torch.randn(64, 10, generator=g).bfloat16()
    eps = torch.randn(64, 10, generator=g).bfloat16()
    z, kl = fastfvae.reparameterize_kl(mu, logvar, eps=eps)
    assert z.dtype == torch.bfloat16 and kl.dtype == torch.float32
    want = fastfvae.reference.gaussian_kl(mu.double(), logvar.double())
    torch.testing.assert_close(kl.double(), want, rtol=1e-6, atol=1e-6)  # not bfloat16's 1e-2
    torch.testing.assert_close(z, fastfvae.reference.reparameterize(mu.float(), logvar.float(), eps.float()).bfloat16(),
                               rtol=0, atol=0)
    logits = (torch.randn(64, 2, generator=g) * 3).bfloat16()
    tc = fastfvae.tc_loss(logits)
    assert tc.dtype == torch.float32
    torch.testing.assert_close(tc.double(), fastfvae.reference.tc_loss(logits.double()), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("requested", ["auto", "reference"])
def test_an_empty_dimension_is_named(requested):
    """The message names the dimension that is empty, not always B."""
    _raises(ValueError, r"mu: expected a non-empty tensor \(D >= 1\), got shape \(4, 0\)",
            fastfvae.reparameterize_kl, torch.zeros(4, 0), torch.zeros(4, 0), backend=requested)
    _raises(ValueError, r"z: expected a non-empty tensor \(D >= 1\), got shape \(2, 3, 0\)",
            fastfvae.permute_dims, torch.zeros(2, 3, 0), backend=requested)
    _raises(ValueError, r"z: expected a non-empty tensor \(G >= 1\), got shape \(0, 3, 2\)",
            fastfvae.permute_dims, torch.zeros(0, 3, 2), backend=requested)
    _raises(ValueError, r"d_logits: expected a non-empty tensor \(K >= 1\), got shape \(5, 0\)",
            fastfvae.tc_loss, torch.zeros(5, 0), backend=requested)
    _raises(ValueError, r"mu: expected a non-empty tensor \(K >= 1\), got shape \(0, 3\)",
            fastfvae.log_qz, GOOD, torch.zeros(0, 3), torch.zeros(0, 3), dataset_size=10, backend=requested)
    _raises(ValueError, r"z: expected a non-empty tensor \(M >= 1\), got shape \(0, 3\)",
            fastfvae.log_qz, torch.zeros(0, 3), GOOD, GOOD, dataset_size=10, backend=requested)
