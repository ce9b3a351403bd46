"""backend= and FASTFVAE_BACKEND dispatch (DESIGN.md §4)."""
from __future__ import annotations

import pytest
import torch

import fastfvae
from fastfvae import backends

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh_choices():
    backends.clear_cache()
    yield
    backends.clear_cache()


def test_auto_on_cpu_prefers_native_then_reference(monkeypatch):
    monkeypatch.delenv("FASTFVAE_BACKEND", raising=False)
    chosen = backends.select("permute_dims", "auto", CPU, torch.float32).NAME
    native_ok = backends.reason_not_served("native", "permute_dims", CPU, torch.float32) is None
    assert chosen == ("native" if native_ok else "reference")


def test_environment_variable_overrides_auto(monkeypatch):
    monkeypatch.setenv("FASTFVAE_BACKEND", "reference")
    assert backends.select("tc_loss", "auto", CPU, torch.float32).NAME == "reference"
    # An explicit backend= argument is not overridden.
    monkeypatch.setenv("FASTFVAE_BACKEND", "triton")
    assert backends.select("tc_loss", "reference", CPU, torch.float32).NAME == "reference"


def test_explicit_backend_that_cannot_serve_lists_every_reason(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError) as info:
        fastfvae.tc_loss(torch.randn(4, 2), backend="triton")
    message = str(info.value)
    assert "backend='triton' cannot run tc_loss on a cpu tensor of torch.float32" in message
    for name in backends.BACKEND_NAMES:
        assert f"  {name}: " in message
    assert "reference: can serve it" in message


def test_reasons_cover_every_backend():
    reasons = backends.reasons("reparameterize_kl", CPU, torch.float64)
    assert set(reasons) == set(backends.BACKEND_NAMES)
    assert reasons["reference"] is None
    assert all(r is None or isinstance(r, str) and r for r in reasons.values())


def test_auto_gives_the_reference_numbers(monkeypatch):
    """Whatever auto picks agrees with the reference backend on the same seed."""
    monkeypatch.delenv("FASTFVAE_BACKEND", raising=False)
    z = torch.randn(33, 7)
    torch.manual_seed(4)
    a = fastfvae.permute_dims(z)
    torch.manual_seed(4)
    b = fastfvae.permute_dims(z, backend="reference")
    assert torch.equal(a, b)
