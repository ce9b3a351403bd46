"""permute_dims (paper, Algorithm 1) on every backend: exact agreement with the shared Philox
permutation, gradients, and the distribution of the permutations (DESIGN.md §8, §13)."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import fastfvae
from fastfvae import reference
from conftest import FLOAT_DTYPES, non_contiguous, require, seed_for

SHAPES = [(1, 1), (1, 4), (2, 3), (7, 5), (64, 10), (129, 3), (3, 33, 4), (2, 1, 3)]


def _expected_index(seed, shape, device):
    groups, batch, dim = (1, *shape) if len(shape) == 2 else shape
    return reference.philox_permutation(seed, groups, batch, dim, device=device).reshape(shape)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_exactly_the_shared_permutation_forward_and_backward(backend, device, dtype, shape):
    require(backend, "permute_dims", device, dtype)
    z = torch.randn(shape, device=device).to(dtype).requires_grad_()
    seed = seed_for(99, device)
    torch.manual_seed(99)
    out = fastfvae.permute_dims(z, backend=backend)
    index = _expected_index(seed, shape, device)
    assert out.shape == z.shape and out.dtype == dtype
    assert torch.equal(out, reference.permute_dims(z.detach(), index)), "not the shared permutation"
    grad_out = torch.randn(shape, device=device).to(dtype)
    out.backward(grad_out)
    z_ref = z.detach().clone().requires_grad_()
    reference.permute_dims(z_ref, index).backward(grad_out)
    assert torch.equal(z.grad, z_ref.grad), "gradient is not scattered back through the permutation"


def test_noncontiguous_input_and_expanded_gradient(backend, device):
    require(backend, "permute_dims", device, torch.float32)
    base = torch.randn(20, 6, device=device)
    z = non_contiguous(base).requires_grad_()
    seed = seed_for(3, device)
    torch.manual_seed(3)
    out = fastfvae.permute_dims(z, backend=backend)
    assert torch.equal(out, reference.permute_dims(base, _expected_index(seed, (20, 6), device)))
    out.sum().backward()  # stride-0 gradient: every element receives exactly 1
    assert torch.equal(z.grad, torch.ones_like(base))


def test_each_column_is_a_permutation_and_sorted_values_agree(backend, device):
    require(backend, "permute_dims", device, torch.float64)
    z = torch.randn(4, 300, 7, device=device, dtype=torch.float64)
    out = fastfvae.permute_dims(z, backend=backend)
    assert torch.equal(out.sort(dim=1).values, z.sort(dim=1).values)


def test_manual_seed_controls_the_permutation(backend, device):
    require(backend, "permute_dims", device, torch.float32)
    z = torch.arange(64 * 10, dtype=torch.float32, device=device).reshape(64, 10)
    torch.manual_seed(1)
    a = fastfvae.permute_dims(z, backend=backend)
    b = fastfvae.permute_dims(z, backend=backend)
    torch.manual_seed(1)
    c = fastfvae.permute_dims(z, backend=backend)
    assert torch.equal(a, c) and not torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# Distribution: uniform per column, independent across columns and groups. The backends draw
# exactly the reference permutation (tested above), so these statistical tests run on the fast
# backends; the thresholds are fixed-seed chi-square tests at p = 1e-4.
# ---------------------------------------------------------------------------------------------
def _chi_square_p_value(counts: torch.Tensor) -> float:
    """Upper tail of Pearson's chi-square for uniform cells (Wilson-Hilferty approximation)."""
    counts = counts.double().flatten()
    expected = counts.sum() / counts.numel()
    stat = ((counts - expected) ** 2 / expected).sum().item()
    k = counts.numel() - 1
    z = ((stat / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def _permutation_ids(index: torch.Tensor) -> torch.Tensor:
    """Map each permutation of range(B) along dim 1 to an id in [0, B!): (G, B, D) -> (G, D)."""
    batch = index.shape[1]
    table = {p: i for i, p in enumerate(itertools.permutations(range(batch)))}
    g, _, d = index.shape
    cols = index.permute(0, 2, 1).reshape(-1, batch).tolist()
    return torch.tensor([table[tuple(c)] for c in cols]).reshape(g, d)


def _draw_permutations(backend, device, groups, batch, dim):
    rows = torch.arange(batch, dtype=torch.float64, device=device).view(1, batch, 1)
    z = rows.expand(groups, batch, dim).contiguous()
    out = fastfvae.permute_dims(z, backend=backend)
    return out.round().long().cpu()  # out[g, i, d] is the source row of position i


@pytest.mark.parametrize("statistics_backend", ["reference", "native"])
def test_columns_uniform_and_independent(statistics_backend, device):
    require(statistics_backend, "permute_dims", device, torch.float64)
    torch.manual_seed(2024)
    ids = _permutation_ids(_draw_permutations(statistics_backend, device, 4800, 4, 2))
    # Uniform over the 24 permutations of 4 rows, in each column.
    for col in range(2):
        p = _chi_square_p_value(torch.bincount(ids[:, col], minlength=24))
        assert p > 1e-4, f"column {col} not uniform (p = {p:.2e})"
    # Independent columns: the 24 x 24 joint table of (column 0, column 1) is uniform.
    joint = torch.bincount(ids[:, 0] * 24 + ids[:, 1], minlength=24 * 24)
    assert _chi_square_p_value(joint) > 1e-4, "columns 0 and 1 are dependent"
    # Independent groups: consecutive groups' permutations of column 0 are independent.
    pairs = torch.bincount(ids[:-1:2, 0] * 24 + ids[1::2, 0], minlength=24 * 24)
    assert _chi_square_p_value(pairs) > 1e-4, "groups are dependent"


@pytest.mark.parametrize("statistics_backend", ["reference", "native"])
def test_every_position_equally_likely_for_large_batches(statistics_backend, device):
    """Where row 0 lands, over 64 columns of 1000 groups of B = 100."""
    require(statistics_backend, "permute_dims", device, torch.float64)
    torch.manual_seed(77)
    source = _draw_permutations(statistics_backend, device, 500, 100, 8)
    landing = (source == 0).nonzero()[:, 1]  # position i where row 0 went
    p = _chi_square_p_value(torch.bincount(landing, minlength=100))
    assert p > 1e-4, f"row 0's position not uniform (p = {p:.2e})"
    # And a pair property a biased sort would break: P(row 0 before row 1) = 1/2.
    before = (source == 0).float().argmax(1) < (source == 1).float().argmax(1)
    n = before.numel()
    assert abs(before.double().mean().item() - 0.5) < 5 * 0.5 / n**0.5


def test_chi_square_helper_rejects_a_biased_shuffle():
    """The statistical tests above can fail: the naive "swap with any position" shuffle, whose
    256 equally likely outcomes cannot spread evenly over 24 permutations, is rejected."""
    g = torch.Generator().manual_seed(0)
    perms = torch.arange(4).repeat(4800, 1)
    rows = torch.arange(4800)
    for i in range(4):
        j = torch.randint(0, 4, (4800,), generator=g)
        a, b = perms[rows, i].clone(), perms[rows, j].clone()
        perms[rows, i], perms[rows, j] = b, a
    ids = _permutation_ids(perms.unsqueeze(2)).flatten()
    assert _chi_square_p_value(torch.bincount(ids, minlength=24)) < 1e-4
    fair = torch.stack([torch.randperm(4, generator=g) for _ in range(4800)])
    fair_ids = _permutation_ids(fair.unsqueeze(2)).flatten()
    assert _chi_square_p_value(torch.bincount(fair_ids, minlength=24)) > 1e-4


def test_gradcheck_float64(backend):
    require(backend, "permute_dims", "cpu", torch.float64)
    z = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)

    def permute_with_fixed_seed(t):
        torch.manual_seed(0)
        return fastfvae.permute_dims(t, backend=backend)

    torch.autograd.gradcheck(permute_with_fixed_seed, (z,))


# ---------------------------------------------------------------------------------------------
# opcheck cases (tests/test_compile.py runs them for every op of fastfvae/registry.py)
# ---------------------------------------------------------------------------------------------
def opcheck_cases(backend):
    """(custom op, arguments) pairs for torch.library.opcheck."""
    z = torch.randn(2, 7, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    index = torch.tensor([[[1, 0], [0, 3], [3, 2], [2, 1]]], dtype=torch.int32)
    ops = torch.ops.fastfvae
    return [
        (ops.permute_dims.default, (z, torch.tensor([12345]), backend)),
        (ops.permute_dims_backward.default, (torch.randn(1, 4, 2), index, backend)),
    ]
