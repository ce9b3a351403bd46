"""Shared test helpers: the backend x device matrix and the one dtype/tolerance table (DESIGN.md §13).

Op tests take the fixtures ``backend`` and ``device`` (parametrized here over every backend
name and every present device) and call ``require(...)``, which skips with the backend's own
reason when it cannot serve the case. Skips never hide a broken build: tests/test_build.py
asserts that the native library was built, and tests/test_triton_interpret.py runs every
``triton`` case in its own process with TRITON_INTERPRET=1.
"""
from __future__ import annotations

import os
import tempfile

# torch.compile's on-disk caches (Inductor's FX graph and AOTAutograd caches) live in one folder
# per user by default, shared by every checkout on the machine, and their keys do not cover a
# custom op's schema: code compiled for another branch's fastfvae::<op> signature was replayed
# here (seen: "Expected a value of type 'Tensor' for argument 'seed'"). Each test session
# compiles into its own folder (subprocesses inherit it).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="fastfvae-tests-inductor-"))

import pytest  # noqa: E402
import torch  # noqa: E402

import fastfvae.ops  # noqa: E402,F401 - registers torch.ops.fastfvae.* (fastfvae/__init__.py imports it lazily)
from fastfvae import backends  # noqa: E402

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# Kernels compute in float32 (float64 for float64) and round once; the expected values are the
# reference computed in float64 from the same (rounded) inputs, so these bound one output
# rounding plus accumulation-order differences.
TOLERANCES = {
    torch.float64: dict(rtol=1e-9, atol=1e-9),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
}

DEVICES = ("cpu",) + (("cuda",) if torch.cuda.is_available() else ())


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", backends.BACKEND_NAMES)
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", DEVICES)


def require(backend: str, op: str, device: str, dtype: torch.dtype) -> None:
    """Skip, with the backend's own reason, when ``backend`` cannot serve the case."""
    reason = backends.reason_not_served(backend, op, torch.device(device), dtype)
    if reason is not None:
        pytest.skip(f"{backend} cannot run {op} on {device}/{dtype}: {reason}")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """Compare in float64 on the CPU with the tolerance of ``dtype``; NaNs must match."""
    torch.testing.assert_close(
        actual.detach().double().cpu(), expected.detach().double().cpu(), equal_nan=True,
        msg=lambda m: f"{what} ({dtype}): {m}", **TOLERANCES[dtype],
    )


def seed_for(manual_seed: int, device: str) -> torch.Tensor:
    """The seed a random op draws right after torch.manual_seed(manual_seed) (functional._draw_seed)."""
    torch.manual_seed(manual_seed)
    return torch.randint(2**62, (1,), dtype=torch.int64, device=device)


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as ``t`` in a non-contiguous layout (a transposed copy, transposed back)."""
    out = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not out.is_contiguous() or t.shape[-1] == 1 or t.shape[-2] == 1
    return out
