"""discriminator_loss on every backend against the float64 reference (DESIGN.md §1, §13)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastfvae
from fastfvae import reference
from fastfvae.reference import compute_dtype
from conftest import FLOAT_DTYPES, assert_close, non_contiguous, require

SHAPES = [(1, 2), (1,), (5, 1), (7, 2), (64, 2), (1000, 2), (333,), (4097, 1)]


def _check(d_real, d_perm, backend, dtype, grad_scale):
    d_real, d_perm = d_real.detach().requires_grad_(), d_perm.detach().requires_grad_()
    loss = fastfvae.discriminator_loss(d_real, d_perm, backend=backend)
    assert loss.shape == () and loss.dtype == compute_dtype(dtype)  # float32 for 16-bit (17.3)
    (loss * grad_scale).backward()
    real64, perm64 = (t.detach().double().requires_grad_() for t in (d_real, d_perm))
    loss_ref = reference.discriminator_loss(real64, perm64)
    (loss_ref * grad_scale).backward()
    assert_close(loss, loss_ref, dtype, "loss")
    assert_close(d_real.grad, real64.grad, dtype, "grad d_real")
    assert_close(d_perm.grad, perm64.grad, dtype, "grad d_perm")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(backend, device, dtype, shape):
    require(backend, "discriminator_loss", device, dtype)
    d_real = (torch.randn(shape) * 3).to(device=device, dtype=dtype)
    d_perm = (torch.randn(shape) * 3).to(device=device, dtype=dtype)
    _check(d_real, d_perm, backend, dtype, grad_scale=0.6)


def test_noncontiguous_logits(backend, device):
    require(backend, "discriminator_loss", device, torch.float32)
    wide = torch.randn(40, 4, device=device)
    _check(wide[:, ::2], wide[:, 1::2], backend, torch.float32, grad_scale=-1.3)
    a, b = (non_contiguous(torch.randn(11, 2, device=device)) for _ in range(2))
    _check(a, b, backend, torch.float32, grad_scale=1.0)


def test_extreme_logits_stay_finite_and_exact(backend, device):
    require(backend, "discriminator_loss", device, torch.float32)
    d_real = torch.tensor([[1000.0, -1000.0], [-1000.0, 1000.0], [0.0, 0.0]], device=device)
    d_perm = torch.tensor([[-1000.0, 1000.0], [1000.0, -1000.0], [88.0, -88.0]], device=device)
    _check(d_real, d_perm, backend, torch.float32, grad_scale=1.0)
    _check(d_real[:, 0], d_perm[:, 0], backend, torch.float32, grad_scale=1.0)


def test_conventions_match_1konny_and_bce(backend):
    """2 logits: class 0 = from q(z) (1Konny's CE); 1 logit: the logit of "from q(z)"."""
    require(backend, "discriminator_loss", "cpu", torch.float64)
    d_real, d_perm = torch.randn(16, 2, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    zeros, ones = torch.zeros(16, dtype=torch.long), torch.ones(16, dtype=torch.long)
    expected = 0.5 * (F.cross_entropy(d_real, zeros) + F.cross_entropy(d_perm, ones))
    torch.testing.assert_close(fastfvae.discriminator_loss(d_real, d_perm, backend=backend), expected)
    r, p = d_real[:, 0], d_perm[:, 0]
    expected_bce = 0.5 * (
        F.binary_cross_entropy(torch.sigmoid(r), torch.ones(16, dtype=torch.float64))
        + F.binary_cross_entropy(torch.sigmoid(p), torch.zeros(16, dtype=torch.float64))
    )
    torch.testing.assert_close(fastfvae.discriminator_loss(r, p, backend=backend), expected_bce)


def test_nan_propagates(backend):
    require(backend, "discriminator_loss", "cpu", torch.float32)
    d_real, d_perm = torch.randn(6, 2), torch.randn(6, 2)
    d_perm[2, 0] = float("nan")
    assert torch.isnan(fastfvae.discriminator_loss(d_real, d_perm, backend=backend))


SPECIAL_VALUES = [0.0, 1.5, -2.0, 87.0, -87.0, 1e30, float("inf"), float("-inf"), float("nan")]


@pytest.mark.parametrize("logits", [2, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_special_values_give_the_reference_nan_and_inf_pattern(backend, dtype, logits):
    """Every (a, b) pair of special logits (K = 2), or every special logit a (K = 1), as d_real and
    as d_perm (one row each, B = 1): loss and gradients are NaN, +-inf or finite exactly where the
    reference's are, and close where finite."""
    require(backend, "discriminator_loss", "cpu", dtype)
    finite = torch.tensor([[0.3, -0.7]])[:, :logits]
    for a in SPECIAL_VALUES:
        for b in SPECIAL_VALUES if logits == 2 else SPECIAL_VALUES[:1]:
            pair = torch.tensor([[a, b]])[:, :logits]
            for d_real, d_perm in ((pair, finite), (finite, pair)):
                real, perm = (t.to(dtype, copy=True).requires_grad_() for t in (d_real, d_perm))
                loss = fastfvae.discriminator_loss(real, perm, backend=backend)
                loss.backward()
                real64, perm64 = (t.detach().double().requires_grad_() for t in (real, perm))
                loss_ref = reference.discriminator_loss(real64, perm64)
                loss_ref.backward()
                for name, got, want in (("loss", loss, loss_ref), ("grad d_real", real.grad, real64.grad),
                                        ("grad d_perm", perm.grad, perm64.grad)):
                    got, want = got.detach().double(), want.detach()
                    where = f"{name} at {pair.tolist()} as {'d_real' if d_real is pair else 'd_perm'}"
                    assert torch.equal(got.isnan(), want.isnan()), f"{where}: NaN pattern {got} vs {want}"
                    assert torch.equal(got.isinf(), want.isinf()), f"{where}: inf pattern {got} vs {want}"
                    finite_mask = want.isfinite()
                    assert_close(got[finite_mask].to(dtype), want[finite_mask], dtype, where)


def test_gradcheck_float64(backend):
    require(backend, "discriminator_loss", "cpu", torch.float64)
    for shape in [(6, 2), (5,), (4, 1)]:
        a = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        b = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        torch.autograd.gradcheck(lambda x, y: fastfvae.discriminator_loss(x, y, backend=backend), (a, b))


def test_accuracy():
    d_real = torch.tensor([[2.0, 1.0], [0.0, 3.0]])  # right, wrong
    d_perm = torch.tensor([[0.0, 1.0], [0.0, 2.0]])  # right, right
    assert fastfvae.discriminator_accuracy(d_real, d_perm).item() == 0.75
    assert fastfvae.discriminator_accuracy(torch.tensor([1.0, -1.0]), torch.tensor([-1.0, -2.0])).item() == 0.75


# ---------------------------------------------------------------------------------------------
# opcheck cases (tests/test_compile.py runs them for every op of fastfvae/registry.py)
# ---------------------------------------------------------------------------------------------
def opcheck_cases(backend):
    """(custom op, arguments) pairs for torch.library.opcheck."""
    g = torch.Generator().manual_seed(0)
    real, perm = (torch.randn(8, 2, generator=g, requires_grad=True) for _ in range(2))
    ops = torch.ops.fastfvae
    return [
        (ops.discriminator_loss.default, (real, perm, backend)),
        (ops.discriminator_loss_backward.default, (torch.randn(()), torch.randn(8, 1), torch.randn(8, 1), backend)),
    ]
