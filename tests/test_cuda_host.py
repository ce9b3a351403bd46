"""Checks of the CUDA backend that run without a GPU (kernels/cuda/REVIEW.md, "Verified without a GPU").

1. tests/cuda_formulas_harness.cpp builds kernels/cuda/formulas.h (every per-element formula,
   the permutation key and the bitonic network of the kernels) with g++; its answers are
   compared with fastfvae.reference and torch autograd.
2. ctypes calls into the built libfastfvae_cuda.so: invalid arguments come back with their
   status and message before any CUDA call; on a machine without a GPU, valid calls come back
   with FFV_ERR_CUDA instead of crashing.
"""
from __future__ import annotations

import ctypes
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastfvae import reference

ROOT = Path(__file__).resolve().parent.parent
HARNESS_SOURCE = ROOT / "tests" / "cuda_formulas_harness.cpp"


# ---- the g++ harness ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """A function sending command lines to the compiled harness and returning its output lines."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ is not installed: cannot build tests/cuda_formulas_harness.cpp")
    binary = tmp_path_factory.mktemp("cuda_host") / "cuda_formulas_harness"
    build = subprocess.run(
        [compiler, "-O2", "-std=c++17", "-I", str(ROOT / "kernels" / "include"), "-I", str(ROOT / "kernels" / "cuda"),
         str(HARNESS_SOURCE), "-o", str(binary)],
        capture_output=True, text=True,
    )
    # A compile failure is a failure (formulas.h no longer builds as host code), not a skip.
    assert build.returncode == 0, f"g++ failed on {HARNESS_SOURCE.name}:\n{build.stderr}"

    def run(lines: list[str]) -> list[str]:
        done = subprocess.run([str(binary)], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"harness exited with {done.returncode}: {done.stderr}"
        return done.stdout.splitlines()

    return run


def close(actual: float, expected: float, rtol: float, atol: float) -> bool:
    """|actual - expected| <= atol + rtol*|expected|; NaN only matches NaN, Inf only itself."""
    if math.isnan(actual) or math.isnan(expected):
        return math.isnan(actual) and math.isnan(expected)
    if math.isinf(actual) or math.isinf(expected):
        return actual == expected
    return abs(actual - expected) <= atol + rtol * abs(expected)


# (seed, G, B, D): B covers both device paths (block sort for B <= 4096, fallback above),
# powers of two and their neighbours, B = 1, G > 1, and seeds up to 2^63 - 1.
PERMUTATION_CASES = [
    (0, 1, 1, 1), (1, 1, 2, 3), (123, 2, 7, 5), (2**62 + 5, 1, 64, 10), (7, 3, 100, 4), (2**63 - 1, 1, 33, 2),
    (42, 1, 1000, 3), (5, 1, 4096, 2), (9, 1, 4097, 1), (11, 2, 5000, 1), (3, 4, 31, 3), (12345678901234, 1, 1024, 32),
]


@pytest.mark.parametrize("seed,G,B,D", PERMUTATION_CASES)
def test_permutation_emulations_equal_reference(harness, seed, G, B, D):
    """Block-sort and fallback emulations draw exactly reference.philox_permutation."""
    block, fallback = harness([f"perm {seed} {G} {B} {D}"])
    expected = reference.philox_permutation(seed, G, B, D).reshape(-1).tolist()
    assert [int(v) for v in block.split()] == expected, "block-sort emulation differs from the reference"
    assert [int(v) for v in fallback.split()] == expected, "fallback emulation differs from the reference"


@pytest.mark.parametrize("seed", [1234, 987654321])
def test_bitonic_network_sorts(harness, seed):
    """The pair-indexed bitonic network sorts random arrays (n = 1..8192, half with duplicates)."""
    trials = 6
    runs, bad = map(int, harness([f"bitonic {trials} {seed}"])[0].split())
    assert runs == 14 * trials  # sizes 2^0 .. 2^13
    assert bad == 0, f"{bad} of {runs} arrays not sorted by the bitonic network"


@pytest.mark.parametrize("seed,offset", [(0, 0), (1, 5), (2**40 + 3, 12345), (2**63 - 1, 2**33 + 7), (77, 999999)])
def test_philox_randn_matches_reference(harness, seed, offset):
    """Host build of philox.h's philox_randn vs reference.philox_randn (float32, 2e-6)."""
    got = float(harness([f"randn {seed} {offset}"])[0])
    expected = reference.philox_randn(seed, torch.tensor([offset])).item()
    assert close(got, expected, 2e-6, 2e-6), f"philox_randn({seed}, {offset}) = {got}, reference {expected}"


# float64 and float32 lines of the harness: (dtype, line index within a case, rtol, atol).
PRECISIONS = [(torch.float64, 0, 1e-12), (torch.float32, 1, 2e-6)]
REPARAM_NAMES = ["z", "kl_term", "gkl", "grad_mu", "grad_logvar", "grad_eps"]


def reparam_cases() -> list[tuple]:
    """(mu, logvar, eps, gz, g, reduction, B): 40 random rows plus overflow / NaN / Inf rows."""
    gen = torch.Generator().manual_seed(0)
    cases = []
    for _ in range(40):
        mu, lv, eps, gz, g = (torch.randn(5, generator=gen, dtype=torch.float64) * 2).tolist()
        cases.append((mu, lv, eps, gz, g, int(torch.randint(0, 3, (1,), generator=gen)), 7))
    inf, nan = float("inf"), float("nan")
    cases += [(0.0, 50.0, 1.0, 1.0, 1.0, 1, 3), (1.0, -60.0, -2.0, 0.5, 2.0, 2, 1), (nan, 0.0, 1.0, 1.0, 1.0, 0, 2),
              (0.0, inf, 1.0, 1.0, 1.0, 2, 2),
              # std*eps far below mu's last bit (z - mu would give 0) and an infinite mu (inf - inf)
              (10.0, -30.0, 0.7, 1.0, 0.0, 2, 1), (inf, -1.0, 0.5, 1.0, 0.0, 2, 1)]
    return cases


def reparam_expected(case: tuple, dtype: torch.dtype) -> list[float]:
    """The six values by autograd through reference.reparameterize_kl (kl_term = 2 * kl_row)."""
    mu, lv, eps, gz, g, reduction, B = case
    m, l, e = (torch.tensor([[v]], dtype=dtype, requires_grad=True) for v in (mu, lv, eps))
    z, kl_row = reference.reparameterize_kl(m, l, e, "none")
    gkl = g / B if reduction == 1 else g
    torch.autograd.backward([z, kl_row], [torch.tensor([[gz]], dtype=dtype), torch.tensor([gkl], dtype=dtype)])
    return [z.item(), 2 * kl_row.item(), torch.tensor(gkl, dtype=dtype).item(), m.grad.item(), l.grad.item(),
            e.grad.item()]


@pytest.mark.parametrize("dtype,line,rtol", PRECISIONS, ids=["float64", "float32"])
def test_reparameterize_kl_formulas_match_autograd(harness, dtype, line, rtol):
    """z, kl term, gkl_i, grad_mu, grad_logvar, grad_eps of formulas.h vs autograd."""
    cases = reparam_cases()
    out = harness([f"reparam {' '.join(repr(v) for v in case)}" for case in cases])
    failures = []
    for n, case in enumerate(cases):
        got = [float(v) for v in out[2 * n + line].split()]
        expected = reparam_expected(case, dtype)
        for name, a, b in zip(REPARAM_NAMES, got, expected):
            atol = 1e-300 if dtype == torch.float64 else 1e-30
            if not close(a, b, rtol, atol):
                failures.append((name, case, a, b))
    assert not failures, f"{len(failures)} mismatches (name, case, formulas.h, autograd): {failures[:5]}"


LOGIT_NAMES = ["ce0", "ce1", "dce0/dx0", "dce0/dx1", "dce1/dx0", "dce1/dx1", "bce1", "bce0", "dbce1", "dbce0"]


def logit_cases() -> list[tuple[float, float]]:
    """(x0, x1): 40 random rows plus large, infinite, NaN and tiny logits."""
    gen = torch.Generator().manual_seed(1)
    inf, nan = float("inf"), float("nan")
    cases = [tuple((torch.randn(2, generator=gen, dtype=torch.float64) * 4).tolist()) for _ in range(40)]
    return cases + [(50.0, -50.0), (-50.0, 50.0), (100.0, 0.0), (-100.0, 0.0), (inf, 0.0), (-inf, 0.0), (0.0, inf),
                    (0.0, -inf), (inf, inf), (nan, 1.0), (1e-8, -1e-8), (88.0, -88.0), (-17.0, 17.0)]


def logits_expected(x0: float, x1: float, dtype: torch.dtype) -> list[float]:
    """CE of the row for labels 0 and 1, BCE of x0 for targets 1 and 0, and their autograd grads."""
    ce, ce_grads, bce, bce_grads = [], [], [], []
    for label in (0, 1):
        x = torch.tensor([[x0, x1]], dtype=dtype, requires_grad=True)
        loss = F.cross_entropy(x, torch.tensor([label]))
        loss.backward()
        ce.append(loss.item())
        ce_grads += x.grad[0].tolist()
    for target in (1.0, 0.0):
        x = torch.tensor([x0], dtype=dtype, requires_grad=True)
        loss = F.binary_cross_entropy_with_logits(x, torch.tensor([target], dtype=dtype))
        loss.backward()
        bce.append(loss.item())
        bce_grads.append(x.grad.item())
    return ce + ce_grads + bce + bce_grads


@pytest.mark.parametrize("dtype,line,rtol,atol", [(torch.float64, 0, 1e-12, 1e-300), (torch.float32, 1, 2e-6, 1e-37)],
                         ids=["float64", "float32"])
def test_discriminator_formulas_match_torch(harness, dtype, line, rtol, atol):
    """CE / BCE losses and softmax / sigmoid gradients of formulas.h vs torch, NaN/Inf pattern included."""
    cases = logit_cases()
    out = harness([f"logits {x0!r} {x1!r}" for x0, x1 in cases])
    failures = []
    for n, (x0, x1) in enumerate(cases):
        got = [float(v) for v in out[2 * n + line].split()]
        for name, a, b in zip(LOGIT_NAMES, got, logits_expected(x0, x1, dtype)):
            if not close(a, b, rtol, atol):
                failures.append((name, (x0, x1), a, b))
    assert not failures, f"{len(failures)} mismatches (name, row, formulas.h, torch): {failures[:5]}"


# ---- the C ABI of libfastfvae_cuda.so ---------------------------------------------------------

FFV_ERR_INVALID_ARGUMENT, FFV_ERR_UNSUPPORTED_DTYPE, FFV_ERR_CUDA = 1, 2, 4
P, I64, I32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
SEED_P, INDEX_P = ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int32)
SIGNATURES = {
    "ffv_reparameterize_kl_forward": [I32, I64, I64, P, I64, I64, P, I64, I64, P, I64, I64, SEED_P, I32, P, P, P, I64, P],
    "ffv_permute_dims_forward": [I32, I64, I64, I64, P, I64, I64, I64, SEED_P, P, INDEX_P, P, I64, P],
    "ffv_tc_loss_forward": [I32, I64, I64, P, I64, I64, P, P, I64, P],
    "ffv_discriminator_loss_backward": [I32, I64, I64, P, P, I64, I64, P, I64, I64, P, P, P],
}
# ABI 3: the workspace size queries (host functions) and the other forward with a workspace.
BYTES_P = ctypes.POINTER(ctypes.c_int64)
MORE_SIGNATURES = {
    "ffv_discriminator_loss_forward": [I32, I64, I64, P, I64, I64, P, I64, I64, P, P, I64, P],
    "ffv_reparameterize_kl_workspace_bytes": [I32, I64, I64, I32, BYTES_P],
    "ffv_permute_dims_workspace_bytes": [I32, I64, I64, I64, BYTES_P],
    "ffv_tc_loss_workspace_bytes": [I32, I64, I64, BYTES_P],
    "ffv_discriminator_loss_workspace_bytes": [I32, I64, I64, BYTES_P],
}


@pytest.fixture(scope="module")
def cuda_library():
    """(call, last_error): call(entry, *args) runs one ABI entry with host buffers for pointers."""
    from fastfvae.backends import native

    path = native.library_dir("libfastfvae_cuda.so") / "libfastfvae_cuda.so"
    if not path.is_file():
        pytest.skip(f"{path} is absent (the CUDA library was not built)")
    lib = ctypes.CDLL(str(path))
    lib.ffv_last_error.restype = ctypes.c_char_p
    # Host buffers, large enough for every call below; pointers are never dereferenced on the
    # host, and without a device the CUDA calls fail before touching them.
    data = (ctypes.c_double * 64)()
    seed = (ctypes.c_int64 * 1)(5)
    index = (ctypes.c_int32 * 64)()
    nbytes = (ctypes.c_int64 * 1)(-1)
    pointers = {"p": ctypes.cast(data, P), "seed": ctypes.cast(seed, SEED_P), "index": ctypes.cast(index, INDEX_P),
                "bytes": ctypes.cast(nbytes, BYTES_P)}

    def call(entry: str, *args):
        function = getattr(lib, entry)
        function.argtypes = {**SIGNATURES, **MORE_SIGNATURES}[entry]
        function.restype = ctypes.c_int
        status = function(*(pointers[a] if isinstance(a, str) else a for a in args))
        return status, lib.ffv_last_error().decode()

    call.bytes = nbytes  # where the size queries write
    call.keepalive = (data, seed, index, nbytes)  # the buffers live as long as the fixture
    return call


RK, PD, TC, DL = SIGNATURES  # entry names, in SIGNATURES order
# (id, entry, args, status, message part); "p"/"seed"/"index" stand for the host buffers.
INVALID_CALLS = [
    ("reparam_B0", RK, (0, 0, 4, "p", 4, 1, "p", 4, 1, None, 0, 0, "seed", 1, "p", "p", None, 0, None),
     FFV_ERR_INVALID_ARGUMENT, "B must be >= 1, got 0"),
    ("reparam_seed_null", RK, (0, 2, 4, "p", 4, 1, "p", 4, 1, None, 0, 0, None, 1, "p", "p", None, 0, None),
     FFV_ERR_INVALID_ARGUMENT, "seed (needed when eps is NULL) must not be NULL"),
    ("reparam_reduction7", RK, (0, 2, 4, "p", 4, 1, "p", 4, 1, None, 0, 0, "seed", 7, "p", "p", None, 0, None),
     FFV_ERR_INVALID_ARGUMENT, "reduction code 7 is not one of none=0, mean=1, sum=2"),
    ("reparam_dtype9", RK, (9, 2, 4, "p", 4, 1, "p", 4, 1, None, 0, 0, "seed", 1, "p", "p", None, 0, None),
     FFV_ERR_UNSUPPORTED_DTYPE, "dtype code 9 is not one of"),
    ("permute_B_2pow31", PD, (0, 1, 2**31, 1, "p", 1, 1, 1, "seed", "p", "index", None, 0, None),
     FFV_ERR_INVALID_ARGUMENT, "B must fit the int32 index, got 2147483648"),
    ("permute_overflow", PD, (0, 2**40, 2**30, 2**10, "p", 1, 1, 1, "seed", "p", "index", None, 0, None),
     FFV_ERR_INVALID_ARGUMENT, "more than 2^63 - 1 elements"),
    ("tc_K3", TC, (0, 4, 3, "p", 3, 1, "p", None, 0, None), FFV_ERR_INVALID_ARGUMENT, "K (logits per row) must be 1 or 2, got 3"),
    ("disc_grad_perm_null", DL, (1, 4, 2, "p", "p", 2, 1, "p", 2, 1, "p", None, None),
     FFV_ERR_INVALID_ARGUMENT, "grad_perm must not be NULL"),
]


@pytest.mark.parametrize("entry,args,status,message", [c[1:] for c in INVALID_CALLS], ids=[c[0] for c in INVALID_CALLS])
def test_cuda_library_rejects_invalid_arguments(cuda_library, entry, args, status, message):
    """Checked before any CUDA call, so this holds with or without a GPU."""
    got_status, got_message = cuda_library(entry, *args)
    assert got_status == status, f"{entry}: status {got_status} ({got_message!r}), expected {status}"
    assert got_message.startswith(f"{entry}: ") and message in got_message, got_message


# Valid calls, including the workspace paths (the caller's buffer, here a host one that is never
# dereferenced: the launch fails first) and the CUB fallback (its size query fails first).
# Workspace sizes: reparameterize_kl MEAN, B = 100000: float64 [B] (800000 B, 256-aligned) +
# float64 partials [ceil(100000 / 16384) = 7]; tc / discriminator, B = 20000 float32: [2] / [2, 2].
DISC = "ffv_discriminator_loss_forward"
VALID_CALLS = [
    ("reparam_none", RK, (0, 2, 4, "p", 4, 1, "p", 4, 1, None, 0, 0, "seed", 0, "p", "p", None, 0, None)),
    ("reparam_mean_workspace", RK, (0, 100000, 4, "p", 4, 1, "p", 4, 1, None, 0, 0, "seed", 1, "p", "p", "p", 800056, None)),
    ("permute_block_sort", PD, (0, 1, 8, 2, "p", 16, 2, 1, "seed", "p", "index", None, 0, None)),
    ("permute_fallback", PD, (0, 1, 5000, 2, "p", 10000, 2, 1, "seed", "p", "index", None, 0, None)),
    ("tc", TC, (0, 4, 2, "p", 2, 1, "p", None, 0, None)),
    ("tc_two_stage", TC, (0, 20000, 2, "p", 2, 1, "p", "p", 8, None)),
    ("disc_two_stage", DISC, (0, 20000, 2, "p", 2, 1, "p", 2, 1, "p", "p", 16, None)),
]


@pytest.mark.parametrize("entry,args", [c[1:] for c in VALID_CALLS], ids=[c[0] for c in VALID_CALLS])
def test_cuda_library_without_device_returns_cuda_error(cuda_library, entry, args):
    """No GPU: a valid call fails cleanly with FFV_ERR_CUDA and a message, no crash."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the call would run (with host pointers), not fail")
    status, message = cuda_library(entry, *args)
    assert status == FFV_ERR_CUDA, f"{entry}: status {status} ({message!r}), expected FFV_ERR_CUDA"
    assert message.startswith(f"{entry}: ") and "cuda" in message.lower(), message


# ---- ABI 3: workspace size queries and checks (host code: no device needed) ------------------
WORKSPACE_SIZES = [
    # (id, query, size arguments, bytes): fastfvae.h's formulas
    ("reparam_none", "ffv_reparameterize_kl_workspace_bytes", (0, 100000, 4, 0), 0),
    ("reparam_mean_one_block", "ffv_reparameterize_kl_workspace_bytes", (0, 2048, 4, 1), 0),
    ("reparam_mean_rows", "ffv_reparameterize_kl_workspace_bytes", (0, 4096, 4, 1), 4096 * 8),
    ("reparam_sum_rows_unaligned", "ffv_reparameterize_kl_workspace_bytes", (1, 16383, 1, 2), 131072),
    ("reparam_mean_two_stage", "ffv_reparameterize_kl_workspace_bytes", (0, 100000, 4, 1), 800000 + 7 * 8),
    ("reparam_huge_B", "ffv_reparameterize_kl_workspace_bytes", (0, 2**31, 1, 1), 2**34 + 65536 * 8),
    ("permute_block_sort", "ffv_permute_dims_workspace_bytes", (0, 3, 4096, 10), 0),
    ("tc_one_block", "ffv_tc_loss_workspace_bytes", (0, 16384, 2), 0),
    ("tc_two_stage_f32", "ffv_tc_loss_workspace_bytes", (0, 16385, 2), 2 * 4),
    ("tc_two_stage_f64", "ffv_tc_loss_workspace_bytes", (1, 3 * 16384 + 1, 1), 4 * 8),
    ("tc_two_stage_bf16", "ffv_tc_loss_workspace_bytes", (3, 2**31, 2), 65536 * 4),
    ("disc_one_block", "ffv_discriminator_loss_workspace_bytes", (2, 100, 2), 0),
    ("disc_two_stage", "ffv_discriminator_loss_workspace_bytes", (1, 20000, 2), 2 * 2 * 8),
]


@pytest.mark.parametrize("query,sizes,expected", [c[1:] for c in WORKSPACE_SIZES], ids=[c[0] for c in WORKSPACE_SIZES])
def test_cuda_workspace_size_queries(cuda_library, query, sizes, expected):
    cuda_library.bytes[0] = -1
    status, message = cuda_library(query, *sizes, "bytes")
    assert status == 0, message
    assert cuda_library.bytes[0] == expected


def test_cuda_workspace_queries_check_their_arguments(cuda_library):
    status, message = cuda_library("ffv_tc_loss_workspace_bytes", 9, 4, 2, "bytes")
    assert status == FFV_ERR_UNSUPPORTED_DTYPE and "dtype code 9" in message, message
    status, message = cuda_library("ffv_permute_dims_workspace_bytes", 0, 1, 0, 1, "bytes")
    assert status == FFV_ERR_INVALID_ARGUMENT and "B must be >= 1" in message, message
    status, message = cuda_library("ffv_reparameterize_kl_workspace_bytes", 0, 4, 4, 1, None)
    assert status == FFV_ERR_INVALID_ARGUMENT and "bytes must not be NULL" in message, message


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a device CUB's size query succeeds")
def test_cuda_permute_fallback_query_needs_a_device(cuda_library):
    """B > 4096: the size includes CUB's temporary storage, a host query that asks the device."""
    status, message = cuda_library("ffv_permute_dims_workspace_bytes", 0, 1, 5000, 2, "bytes")
    assert status == FFV_ERR_CUDA and "SortKeys (size query)" in message, message


TOO_SMALL = [
    ("reparam_null", RK, (0, 100000, 4, "p", 4, 1, "p", 4, 1, None, 0, 0, "seed", 1, "p", "p", None, 0, None),
     "workspace of 0 bytes (NULL) given, 800056 needed"),
    ("reparam_short", RK, (0, 100000, 4, "p", 4, 1, "p", 4, 1, None, 0, 0, "seed", 2, "p", "p", "p", 800055, None),
     "workspace of 800055 bytes given, 800056 needed"),
    ("tc_null", TC, (1, 20000, 1, "p", 1, 1, "p", None, 0, None), "workspace of 0 bytes (NULL) given, 16 needed"),
    ("disc_short", DISC, (0, 20000, 2, "p", 2, 1, "p", 2, 1, "p", "p", 15, None), "15 bytes given, 16 needed"),
]


@pytest.mark.parametrize("entry,args,message", [c[1:] for c in TOO_SMALL], ids=[c[0] for c in TOO_SMALL])
def test_cuda_forward_rejects_a_missing_or_short_workspace(cuda_library, entry, args, message):
    """Checked on the host before any launch: a short buffer never reaches a kernel."""
    status, got = cuda_library(entry, *args)
    assert status == FFV_ERR_INVALID_ARGUMENT and got.startswith(f"{entry}: ") and message in got, got
