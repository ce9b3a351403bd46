"""backend= and FASTFVAE_BACKEND dispatch (DESIGN.md §5)."""
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


# ---------------------------------------------------------------------------- input-aware dispatch
def _limit_d_to(max_d):
    """A stand-in ``limits`` that refuses D > max_d (as the Triton log_qz refuses D > 1024)."""
    def limits(op, dims):
        return [f"D must be <= {max_d}, got {dims['D']}"] if dims.get("D", 0) > max_d else []
    return limits


def test_auto_falls_back_when_a_backend_cannot_take_the_sizes(monkeypatch):
    monkeypatch.delenv("FASTFVAE_BACKEND", raising=False)
    if backends.reason_not_served("native", "log_qz", CPU, torch.float32) is not None:
        pytest.skip("the native library is not built here")
    native = backends.get_backend("native")
    monkeypatch.setattr(native, "limits", _limit_d_to(4))
    monkeypatch.setattr(native, "LIMITED_OPS", ("log_qz",))
    backends.clear_cache()
    assert backends.select("log_qz", "auto", CPU, torch.float32, {"M": 3, "K": 3, "D": 4}).NAME == "native"
    assert backends.select("log_qz", "auto", CPU, torch.float32, {"M": 3, "K": 3, "D": 5}).NAME == "reference"
    # and the public op gives the reference's numbers instead of raising
    z, mu, logvar = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    got = fastfvae.log_qz(z, mu, logvar, dataset_size=10)
    want = fastfvae.log_qz(z, mu, logvar, dataset_size=10, backend="reference")
    torch.testing.assert_close(got, want)


def test_explicit_backend_raises_with_the_size_reason(monkeypatch):
    if backends.reason_not_served("native", "log_qz", CPU, torch.float32) is not None:
        pytest.skip("the native library is not built here")
    monkeypatch.setattr(backends.get_backend("native"), "limits", _limit_d_to(4))
    monkeypatch.setattr(backends.get_backend("native"), "LIMITED_OPS", ("log_qz",))
    backends.clear_cache()
    with pytest.raises(ValueError) as info:
        fastfvae.log_qz(torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5), dataset_size=10, backend="native")
    message = str(info.value)
    assert "backend='native' cannot run log_qz" in message
    assert "native: D must be <= 4, got 5" in message
    assert "reference: can serve it" in message


def test_triton_lists_its_real_size_limits():
    triton_backend = pytest.importorskip("fastfvae.backends.triton")
    if triton_backend.availability() is not None:
        pytest.skip(triton_backend.availability())
    assert triton_backend.limits("log_qz", {"M": 8, "K": 8, "D": 1024}) == []
    too_wide = triton_backend.limits("log_qz", {"M": 8, "K": 8, "D": 1025})
    assert len(too_wide) == 1 and "D must be <= 1024, got 1025" in too_wide[0]
    everything = triton_backend.limits("permute_dims", {"G": 70000, "B": 2**31, "D": 10})
    assert len(everything) == 2  # every reason, not the first
    # reasons() with dims reports them next to the device/dtype reasons of the other backends
    reasons = backends.reasons("log_qz", "cuda", torch.float32, {"M": 8, "K": 8, "D": 2048})
    assert "D must be <= 1024" in reasons["triton"]


def test_native_refuses_row_counts_beyond_int32_for_permute_dims():
    if backends.reason_not_served("native", "permute_dims", CPU, torch.float32) is not None:
        pytest.skip("the native library is not built here")
    native = backends.get_backend("native")
    assert native.limits("permute_dims", {"G": 1, "B": 2**31 - 1, "D": 3}) == []
    assert "B must be <= 2147483647" in native.limits("permute_dims", {"G": 1, "B": 2**31, "D": 3})[0]


def test_reasons_accept_a_string_device():
    """reasons("tc_loss", "cpu", torch.float32), as the ops accept strings."""
    assert backends.reasons("tc_loss", "cpu", torch.float32) == backends.reasons("tc_loss", CPU, torch.float32)
    assert backends.select("tc_loss", "reference", "cpu", torch.float32).NAME == "reference"


def test_bad_environment_variable_is_named(monkeypatch):
    """FASTFVAE_BACKEND=bogus names the variable."""
    monkeypatch.setenv("FASTFVAE_BACKEND", "bogus")
    with pytest.raises(ValueError, match=r"FASTFVAE_BACKEND: expected one of .*got 'bogus'"):
        fastfvae.tc_loss(torch.randn(4, 2))
    # an explicit backend= is not affected by the variable
    assert fastfvae.tc_loss(torch.ones(4, 2), backend="reference").item() == 0.0


def test_loss_modules_are_exported_at_the_top_level():
    """fastfvae.FactorVAELoss etc., as the ops are."""
    import torch.nn as nn

    for name in ("FactorVAELoss", "DiscriminatorLoss", "BetaTCVAELoss", "BetaVAELoss", "DIPVAELoss", "AnnealedVAELoss"):
        module = getattr(fastfvae, name)
        assert module is getattr(fastfvae.losses, name) and issubclass(module, nn.Module)
        assert name in fastfvae.__all__
    for name in fastfvae.__all__:
        assert hasattr(fastfvae, name), name
