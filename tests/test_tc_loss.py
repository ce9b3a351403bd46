"""tc_loss on every backend against the float64 reference (DESIGN.md §1, §13)."""
from __future__ import annotations

import pytest
import torch

import fastfvae
from fastfvae import reference
from fastfvae.reference import compute_dtype
from conftest import FLOAT_DTYPES, assert_close, non_contiguous, require

SHAPES = [(1, 2), (1,), (5, 1), (7, 2), (64, 2), (1000, 2), (333,), (4097, 1)]


def _check(logits, backend, dtype, grad_scale):
    logits = logits.detach().requires_grad_()
    tc = fastfvae.tc_loss(logits, backend=backend)
    assert tc.shape == () and tc.dtype == compute_dtype(dtype)  # float32 for 16-bit (17.3)
    (tc * grad_scale).backward()
    ref_logits = logits.detach().double().requires_grad_()
    tc_ref = reference.tc_loss(ref_logits)
    (tc_ref * grad_scale).backward()
    assert_close(tc, tc_ref, dtype, "tc")
    assert_close(logits.grad, ref_logits.grad, dtype, "grad logits")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(backend, device, dtype, shape):
    require(backend, "tc_loss", device, dtype)
    logits = (torch.randn(shape) * 3).to(device=device, dtype=dtype)
    _check(logits, backend, dtype, grad_scale=-1.7)


def test_noncontiguous_logits(backend, device):
    require(backend, "tc_loss", device, torch.float32)
    wide = torch.randn(50, 4, device=device)
    _check(wide[:, ::2], backend, torch.float32, grad_scale=0.3)  # strided columns
    _check(non_contiguous(torch.randn(9, 2, device=device)), backend, torch.float32, grad_scale=2.0)


def test_is_the_density_ratio_log_d_over_1_minus_d(backend):
    """For 2 logits, l0 - l1 = log D/(1 - D) with D = softmax(l)[:, 0] (paper, eq. 3)."""
    require(backend, "tc_loss", "cpu", torch.float64)
    logits = torch.randn(32, 2, dtype=torch.float64)
    d = torch.softmax(logits, dim=1)[:, 0]
    expected = torch.log(d / (1 - d)).mean()
    torch.testing.assert_close(fastfvae.tc_loss(logits, backend=backend), expected)


def test_nan_propagates(backend):
    require(backend, "tc_loss", "cpu", torch.float32)
    logits = torch.randn(6, 2)
    logits[3, 1] = float("nan")
    assert torch.isnan(fastfvae.tc_loss(logits, backend=backend))


def test_gradcheck_float64(backend):
    require(backend, "tc_loss", "cpu", torch.float64)
    for shape in [(6, 2), (5,)]:
        logits = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        torch.autograd.gradcheck(lambda l: fastfvae.tc_loss(l, backend=backend), (logits,))


# ---------------------------------------------------------------------------------------------
# opcheck cases (tests/test_compile.py runs them for every op of fastfvae/registry.py)
# ---------------------------------------------------------------------------------------------
def opcheck_cases(backend):
    """(custom op, arguments) pairs for torch.library.opcheck."""
    logits = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), requires_grad=True)
    ops = torch.ops.fastfvae
    return [
        (ops.tc_loss.default, (logits, backend)),
        (ops.tc_loss_backward.default, (torch.randn(()), torch.randn(8, 1), backend)),
    ]


@pytest.mark.parametrize("batch", [1, 7, 1024, 5000])
def test_native_contiguous_fast_path_equals_its_strided_path_bit_for_bit(batch):
    """Contiguous float32 (B, 2) logits take a vectorised pass in the CPU kernel; strided ones the
    generic row loop. Both sum the same row values in the same order: the same bits."""
    require("native", "tc_loss", "cpu", torch.float32)
    logits = torch.randn(batch, 2) * 10
    strided = torch.empty(batch, 4)[:, ::2]  # row stride 4, column stride 2
    strided.copy_(logits)
    assert not strided.is_contiguous()
    fast = fastfvae.tc_loss(logits, backend="native")
    generic = fastfvae.tc_loss(strided, backend="native")
    assert torch.equal(fast, generic)
    torch.testing.assert_close(fast, reference.tc_loss(logits.double()).float(), rtol=1e-6, atol=1e-6)
