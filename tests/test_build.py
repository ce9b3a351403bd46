"""The build itself: CI must fail when the native libraries were not built, rather than skip."""
from __future__ import annotations

import importlib.resources
import shutil

import pytest
import torch

from fastfvae import backends


def _lib_dir():
    return importlib.resources.files("fastfvae") / "_lib"


def test_cpu_library_built_and_native_serves_cpu():
    assert (_lib_dir() / "libfastfvae_cpu.so").is_file(), f"libfastfvae_cpu.so missing in {_lib_dir()}"
    reason = backends.reason_not_served("native", "permute_dims", torch.device("cpu"), torch.float32)
    assert reason is None, reason
    assert backends.select("permute_dims", "auto", torch.device("cpu"), torch.float32).NAME in ("native",)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA compiler on this machine")
def test_cuda_sources_compiled():
    """nvcc is present, so the CUDA library must have compiled (catches CUDA compile errors)."""
    assert (_lib_dir() / "libfastfvae_cuda.so").is_file(), (
        f"libfastfvae_cuda.so missing in {_lib_dir()}: the CUDA build failed (see the pip install log)"
    )
