"""The reference itself: Philox known answers, the paper's formulas written out another way."""
from __future__ import annotations

import math

import torch

from fastfvae import reference


def test_philox_matches_random123_known_answer():
    """Random123's published Philox4x32-10 test vector: counter 0, key 0."""
    words = reference.philox_randint4x(0, torch.tensor([0]))
    assert [int(w) for w in words] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def test_philox_seed_tensor_and_int_agree_and_offsets_above_2_pow_32():
    offsets = torch.tensor([0, 1, 2**32 + 5, 2**40])
    a = reference.philox_randint4x(123, offsets)
    b = reference.philox_randint4x(torch.tensor([123]), offsets)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(int(w.min()) >= 0 and int(w.max()) < 2**32 for w in a)
    assert not torch.equal(a[0][2:3], reference.philox_randint4x(123, torch.tensor([5]))[0])


def test_uniform_conversion_edges():
    x = torch.tensor([0, 2**31 - 1, 2**31, 2**32 - 1])
    u = reference.uint32_to_uniform(x)
    assert u.dtype == torch.float32
    assert u[0] == 0 and u[3] == 0  # -1 as int32 maps to 0, like Triton
    assert (u < 1).all() and (u >= 0).all()


def test_kl_matches_the_closed_form_of_torch_distributions():
    mu = torch.randn(6, 4, dtype=torch.float64)
    logvar = torch.randn(6, 4, dtype=torch.float64)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    torch.testing.assert_close(reference.gaussian_kl(mu, logvar, "none"), expected)
    torch.testing.assert_close(reference.gaussian_kl(mu, logvar, "mean"), expected.mean())
    torch.testing.assert_close(reference.gaussian_kl(mu, logvar, "sum"), expected.sum())


def test_permutation_is_a_permutation_per_column_and_depends_on_seed():
    a = reference.philox_permutation(5, 3, 37, 4)
    assert a.shape == (3, 37, 4)
    assert torch.equal(a.sort(dim=1).values, torch.arange(37).view(1, 37, 1).expand(3, 37, 4))
    assert not torch.equal(a, reference.philox_permutation(6, 3, 37, 4))
    assert torch.equal(reference.philox_permutation(5, 1, 1, 3), torch.zeros(1, 1, 3, dtype=torch.long))


def test_randn_is_box_muller_of_the_first_two_streams():
    offsets = torch.arange(10)
    i1, i2, _, _ = reference.philox_randint4x(42, offsets)
    u1 = reference.uint32_to_uniform(i1).double().clamp_min(1e-7)
    u2 = reference.uint32_to_uniform(i2).double()
    expected = torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)
    torch.testing.assert_close(reference.philox_randn(42, offsets).double(), expected, rtol=1e-6, atol=1e-6)
