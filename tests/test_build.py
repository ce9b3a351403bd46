"""The build itself: CI must fail when the native libraries were not built, rather than skip."""
from __future__ import annotations

import ctypes
import re
import shutil
from pathlib import Path

import pytest
import torch

from fastfvae import backends
from fastfvae.backends import native


def _lib_dir(filename: str = "libfastfvae_cpu.so"):
    return native.library_dir(filename)


def test_cpu_library_built_and_native_serves_cpu():
    assert (_lib_dir() / "libfastfvae_cpu.so").is_file(), f"libfastfvae_cpu.so missing in {_lib_dir()}"
    reason = backends.reason_not_served("native", "permute_dims", torch.device("cpu"), torch.float32)
    assert reason is None, reason
    assert backends.select("permute_dims", "auto", torch.device("cpu"), torch.float32).NAME in ("native",)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA compiler on this machine")
def test_cuda_sources_compiled():
    """nvcc is present, so the CUDA library must have compiled (catches CUDA compile errors)."""
    assert (_lib_dir("libfastfvae_cuda.so") / "libfastfvae_cuda.so").is_file(), (
        f"libfastfvae_cuda.so missing in {native.library_dirs()}: the CUDA build failed (see the pip install log)"
    )


# ---------------------------------------------------------------------------------------------
# The C header is the one definition of the ABI's numbers; native/library.py restates them for ctypes,
# and these tests fail when the two drift apart (issue 15: "C and Python restate each other").
# ---------------------------------------------------------------------------------------------
HEADER = Path(__file__).resolve().parents[1] / "kernels" / "include" / "fastfvae.h"


def _header_enum(name: str) -> dict[str, int]:
    """{member: value} of `typedef enum <name> { A = 0, ... } <name>;` in fastfvae.h."""
    body = re.search(r"typedef enum " + name + r" \{(.*?)\} " + name + ";", HEADER.read_text(), re.S)
    assert body, f"enum {name} not found in {HEADER}"
    return {m: int(v) for m, v in re.findall(r"(FFV_\w+)\s*=\s*(\d+)", body.group(1))}


def test_abi_version_is_the_headers_in_python_and_in_both_libraries():
    version = int(re.search(r"#define FFV_ABI_VERSION (\d+)", HEADER.read_text()).group(1))
    assert native.ABI_VERSION == version
    for kind in ("cpu", "cuda"):
        path = _lib_dir(native.LIBRARY_FILES[kind]) / native.LIBRARY_FILES[kind]
        if path.is_file():
            lib = ctypes.CDLL(str(path))
            lib.ffv_abi_version.restype = ctypes.c_int32
            assert lib.ffv_abi_version() == version, path


def test_dtype_reduction_and_status_codes_match_the_header():
    dtypes = _header_enum("ffv_dtype")
    torch_names = {torch.float32: "FFV_FLOAT32", torch.float64: "FFV_FLOAT64",
                   torch.float16: "FFV_FLOAT16", torch.bfloat16: "FFV_BFLOAT16"}
    assert {dtypes[torch_names[t]]: t for t in torch_names} == {v: k for k, v in native.DTYPE_CODES.items()}
    reductions = _header_enum("ffv_reduction")
    assert {name: reductions[f"FFV_REDUCTION_{name.upper()}"] for name in native.REDUCTION_CODES} == native.REDUCTION_CODES
    statuses = _header_enum("ffv_status")
    assert set(native._STATUS_NAMES) == {v for k, v in statuses.items() if k != "FFV_OK"}
    assert statuses["FFV_OK"] == 0
    by_code = {v: k for k, v in statuses.items()}
    for code, text in native._STATUS_NAMES.items():  # "out of memory" <-> FFV_ERR_OUT_OF_MEMORY
        words = by_code[code].removeprefix("FFV_ERR_").lower().replace("_", " ")
        assert words in text.lower(), (code, text, by_code[code])
