"""What is specific to the native backend (fastfvae/backends/native/ over kernels/).

The op-by-op comparisons with the reference live in tests/test_<op>.py (parametrized over every
backend); here: the C ABI's errors reaching Python with the library's message, the package
without the library (reference fallback), Philox agreement with the reference bit for bit
(permutations) and to float rounding (eps), and the 16-bit conversions of kernels/include/dtype.h.
"""
from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from fastfvae import reference as ref
from fastfvae.backends import native

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def library():
    lib, reason = native.load("cpu")
    if lib is None:
        pytest.skip(f"native CPU library unavailable: {reason}")
    return lib


def _seed(value: int) -> torch.Tensor:
    return torch.tensor([value], dtype=torch.int64)


# ------------------------------------------------------------------------------------------- ABI
def test_bad_arguments_return_status_and_message(library):
    """Called directly, a bad argument gives a non-zero status and a message naming it."""
    logits = torch.randn(4, 2)
    out = torch.empty(())
    forward = library.functions["ffv_tc_loss_forward"]
    cases = [
        ((0, 0, 2, logits.data_ptr(), 2, 1, out.data_ptr(), None, 0, None), 1, "B must be >= 1, got 0"),
        ((0, 4, 3, logits.data_ptr(), 2, 1, out.data_ptr(), None, 0, None), 1, "K (logits per row) must be 1 or 2, got 3"),
        ((9, 4, 2, logits.data_ptr(), 2, 1, out.data_ptr(), None, 0, None), 2, "dtype code 9"),
        ((0, 4, 2, None, 2, 1, out.data_ptr(), None, 0, None), 1, "logits must not be NULL"),
    ]
    for args, status, message in cases:
        assert forward(*args) == status
        text = library.last_error()
        assert "ffv_tc_loss_forward" in text and message in text, text


def test_library_errors_become_python_exceptions(library):
    """The launcher path raises ValueError / TypeError carrying the C message."""
    mu = torch.randn(3, 2)
    z, kl = torch.empty(3, 2), torch.empty(())
    common = (3, 2, mu.data_ptr(), 2, 1, mu.data_ptr(), 2, 1, None, 0, 0, _seed(1).data_ptr())
    with pytest.raises(ValueError, match=r"reduction code 7 is not one of none=0, mean=1, sum=2"):
        native._call("ffv_reparameterize_kl_forward", mu, 0, *common, 7, z.data_ptr(), kl.data_ptr(), None, 0)
    with pytest.raises(TypeError, match=r"dtype code 5"):
        native._call("ffv_reparameterize_kl_forward", mu, 5, *common, 1, z.data_ptr(), kl.data_ptr(), None, 0)
    with pytest.raises(ValueError, match=r"seed \(needed when eps is NULL\) must not be NULL"):
        args = (0, 3, 2, mu.data_ptr(), 2, 1, mu.data_ptr(), 2, 1, None, 0, 0, None, 1, z.data_ptr(), kl.data_ptr(), None, 0)
        native._call("ffv_reparameterize_kl_forward", mu, *args)


def test_permute_backward_rejects_an_index_out_of_range(library):
    grad = torch.randn(1, 4, 2)
    index = torch.tensor([[[0, 1], [1, 0], [2, 3], [3, 9]]], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"index holds a row outside \[0, B\)"):
        native.permute_dims_backward(grad, index)


def test_blocked_backward_scatters_like_torch_and_rejects_rows_out_of_range(library):
    """From 2^21 elements, with D a multiple of 16 and a unit column stride, the CPU backward
    scatters each 16-column block in cache (kernels/cpu/permute_dims.cpp): it must equal torch's
    scatter (a strided grad_out, rows after the last 16 x 16 block) and still reject a bad row."""
    shape = (2, 65541, 32)
    index = torch.rand(shape).argsort(dim=1).to(torch.int32)
    grad_out = torch.randn(2, 65541, 48)[..., 8:40]  # row stride 48, column stride 1
    grad_z = native.permute_dims_backward(grad_out, index)
    assert torch.equal(grad_z, torch.empty(shape).scatter_(1, index.long(), grad_out))
    for bad in (65541, -1):
        broken = index.clone()
        broken[1, 65540, 17] = bad
        with pytest.raises(ValueError, match=r"index holds a row outside \[0, B\)"):
            native.permute_dims_backward(grad_out, broken)


def test_why_not_names_the_problem(library):
    assert native.why_not("tc_loss", CPU, torch.float32) is None
    assert "not supported" in native.why_not("tc_loss", CPU, torch.int32)
    assert "no native library for meta tensors" in native.why_not("tc_loss", torch.device("meta"), torch.float32)
    assert "does not export ffv_no_such_op_forward" in native.why_not("no_such_op", CPU, torch.float32)


# ------------------------------------------------------------------------- without the library
_FALLBACK_SCRIPT = textwrap.dedent(
    """
    import torch, fastfvae
    from fastfvae import backends
    from fastfvae.backends import native
    reason = native.availability()
    assert reason is not None and EXPECTED in reason, reason
    assert backends.select("tc_loss", "auto", torch.device("cpu"), torch.float32).NAME == "reference"
    x = torch.randn(8, 2, requires_grad=True)
    tc = fastfvae.tc_loss(x)
    tc.backward()
    assert torch.allclose(tc, (x[:, 0] - x[:, 1]).mean())
    z, kl = fastfvae.reparameterize_kl(torch.randn(5, 3), torch.randn(5, 3))
    assert z.shape == (5, 3) and kl.shape == ()
    try:
        fastfvae.tc_loss(x, backend="native")
    except ValueError as error:
        assert "native: " in str(error) and EXPECTED in str(error), error
        assert str(error).count(EXPECTED) == 1, f"the reason is given more than once: {error}"
    else:
        raise AssertionError("backend='native' without its library did not raise")
    print("fallback ok")
    """
)


@pytest.mark.parametrize("library_state", ["missing", "corrupt", "truncated_1k", "truncated_half"])
def test_package_works_without_the_library(tmp_path, library_state):
    """FASTFVAE_NATIVE_LIB_DIR pointing at an empty folder (or at a broken .so, or at a copy of
    the library cut short, which dlopen would map and die of SIGBUS reading): the package
    imports, native says why it is unavailable, auto falls back to the reference."""
    target = tmp_path / native.LIBRARY_FILES["cpu"]
    if library_state == "corrupt":
        target.write_bytes(b"not a shared library")
        expected = "cannot be loaded"
    elif library_state.startswith("truncated"):
        whole = (native.library_dir() / native.LIBRARY_FILES["cpu"]).read_bytes()
        target.write_bytes(whole[:1024] if library_state == "truncated_1k" else whole[:len(whole) // 2])
        expected = "truncated"
    else:
        expected = "libfastfvae_cpu.so not found"
    env = dict(os.environ, FASTFVAE_NATIVE_LIB_DIR=str(tmp_path))
    env.pop("FASTFVAE_BACKEND", None)
    result = subprocess.run(
        [sys.executable, "-c", f"EXPECTED = {expected!r}\n" + _FALLBACK_SCRIPT],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fallback ok" in result.stdout


# ------------------------------------------------------------------------- Philox agreement
# (1, 20000, 3) and (1, 300000, 1): the tall-column sorts, one counting pass over an L2-resident
# table and two passes over L1-sized ones (kernels/cpu/permute_dims.cpp picks by the L2 size; 70000
# rows take either path depending on it).
PERMUTATION_SHAPES = [(1, 1, 1), (1, 1, 7), (1, 2, 3), (1, 5, 3), (2, 64, 10), (3, 100, 5), (1, 33, 17),
                      (2, 1000, 3), (1, 70000, 2), (3, 2000, 40), (1, 20000, 3), (1, 300000, 1)]


@pytest.mark.parametrize("shape", PERMUTATION_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_permutation_equals_reference_bit_for_bit(library, shape):
    groups, batch, dim = shape
    seed = _seed(int(torch.randint(2**62, ())))
    z = torch.randn(shape)
    out, index = native.permute_dims_forward(z, seed, True)
    expected = ref.philox_permutation(seed, groups, batch, dim)
    # without the index (training's z', detached), the kernel gathers on another path
    out_alone, no_index = native.permute_dims_forward(z, seed, False)
    assert no_index is None and torch.equal(out_alone, torch.gather(z, 1, expected))
    assert torch.equal(index.long(), expected)
    assert torch.equal(out, torch.gather(z, 1, expected))
    # every column of every group is a permutation of the rows
    rows = torch.arange(batch).view(1, batch, 1).expand(shape)
    assert torch.equal(index.long().sort(dim=1).values, rows)
    # the backward puts every gradient back where its element came from
    grad_out = torch.randn(shape)
    grad_z = native.permute_dims_backward(grad_out, index)
    assert torch.equal(torch.gather(grad_z, 1, expected), grad_out)


_PHILOX_DRAWS_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from fastfvae.backends import native
    from fastfvae.backends.native.host_helpers import reparameterize_kl_noise
    seed = torch.tensor([int(sys.argv[2])], dtype=torch.int64)
    draws = {"eps": reparameterize_kl_noise(seed, 1001, 7)}
    # (2, 1001, 20): a block of 16 float32 columns (the transposes, and 9 rows after the last
    # 16 x 16 block) beside a block of 4; (1, 20000, 17): tall columns (a larger bucket table).
    for shape in [(2, 37, 9), (1, 1000, 3), (1, 70000, 2), (2, 1001, 20), (1, 20000, 17)]:
        z = torch.randn(shape)
        out, index = native.permute_dims_forward(z, seed, True)
        assert torch.equal(out, torch.gather(z, 1, index.long())), shape
        draws[shape] = index
    torch.save(draws, sys.argv[1])
    """
)


@pytest.mark.parametrize("cap", ["avx512", "avx2", "scalar"])
def test_every_simd_version_draws_and_permutes_the_same_bits(library, tmp_path, cap):
    """FASTFVAE_CPU_SIMD caps the vector extension of the hand-written CPU paths (Philox, and
    permute_dims' transposes, prefix sum and compare-exchange rounds; kernels/include/
    cpu_philox_simd.h), so each version runs here whatever the machine has: permutations
    (stride-D counters, odd tails, 16-column blocks) equal the reference's and move z's values
    with them, and eps (stride-1 counters) equals this process's, bit for bit."""
    seed = int(torch.randint(2**62, ()))
    env = dict(os.environ, FASTFVAE_CPU_SIMD=cap)
    result = subprocess.run([sys.executable, "-c", _PHILOX_DRAWS_SCRIPT, str(tmp_path / "draws.pt"), str(seed)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    draws = torch.load(tmp_path / "draws.pt")
    from fastfvae.backends.native.host_helpers import reparameterize_kl_noise

    assert torch.equal(draws.pop("eps"), reparameterize_kl_noise(_seed(seed), 1001, 7))
    for (groups, batch, dim), index in draws.items():
        assert torch.equal(index.long(), ref.philox_permutation(_seed(seed), groups, batch, dim)), (cap, batch)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_permutation_moves_other_dtypes_and_strides_unchanged(library, dtype):
    seed = _seed(12345)
    z = torch.randn(2, 37, 9, dtype=torch.float64).to(dtype).transpose(1, 2).contiguous().transpose(1, 2)
    assert not z.is_contiguous()
    out, index = native.permute_dims_forward(z, seed, True)
    expected = ref.philox_permutation(seed, 2, 37, 9)
    assert torch.equal(index.long(), expected)
    assert torch.equal(out, torch.gather(z, 1, expected))


def test_public_permute_dims_matches_reference_backend_under_the_same_seed(library):
    z = torch.randn(3, 200, 6)
    torch.manual_seed(7)
    native_out = __import__("fastfvae").permute_dims(z, backend="native")
    torch.manual_seed(7)
    reference_out = __import__("fastfvae").permute_dims(z, backend="reference")
    assert torch.equal(native_out, reference_out)


EPS_SHAPES = [(1, 1), (1, 5), (7, 3), (64, 10), (333, 17), (3, 3000), (70000, 3)]


@pytest.mark.parametrize("shape", EPS_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_in_kernel_eps_equals_reference_to_float_rounding(library, shape):
    """With mu = 0 and logvar = 0, z is the drawn eps: philox_randn(seed, i*D + d)."""
    batch, dim = shape
    seed = _seed(int(torch.randint(2**62, ())))
    zeros = torch.zeros(shape)
    z, _ = native.reparameterize_kl_forward(zeros, zeros, None, seed, "none")
    expected = ref.philox_randn(seed, torch.arange(batch * dim).reshape(shape))
    torch.testing.assert_close(z, expected, rtol=1e-6, atol=1e-6)


def test_in_kernel_eps_ignores_input_strides_and_dtype(library):
    """eps depends on (seed, i*D + d) only: a non-contiguous float64 input draws the same numbers."""
    seed = _seed(99)
    zeros = torch.zeros(40, 12, dtype=torch.float64).t().contiguous().t()
    z, _ = native.reparameterize_kl_forward(zeros, zeros, None, seed, "none")
    expected = ref.philox_randn(seed, torch.arange(40 * 12).reshape(40, 12)).double()
    torch.testing.assert_close(z, expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------- thread count
# (B, D) on both sides of the OpenMP thresholds of kernels/include/cpu_common.h (2^14 elements
# for Philox/sort/exp loops, 2^17 for cheap ones): one thread and the full team must agree.
THREAD_SHAPES = [(64, 10), (1024, 32), (4096, 40), (70000, 2)]


def _all_native_outputs(batch, dim, seed):
    torch.manual_seed(1)
    mu, logvar, grad_z = torch.randn(batch, dim), torch.randn(batch, dim), torch.randn(batch, dim)
    real, perm, grad = torch.randn(batch, 2), torch.randn(batch, 2), torch.tensor(1.5)
    z, kl = native.reparameterize_kl_forward(mu, logvar, None, seed, "mean")
    out, index = native.permute_dims_forward(z.unsqueeze(0), seed, True)
    return (z, kl, *native.reparameterize_kl_backward(grad_z, grad, mu, logvar, None, seed, "mean", True),
            out, index, native.permute_dims_backward(grad_z.unsqueeze(0), index),
            native.tc_loss_forward(real), native.tc_loss_backward(grad, real),
            native.discriminator_loss_forward(real, perm), *native.discriminator_loss_backward(grad, real, perm))


@pytest.mark.parametrize("shape", THREAD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_results_do_not_depend_on_the_thread_count(library, shape):
    """Every reduction sums fixed chunks in a fixed order, and every permutation depends on the
    seed only: one OpenMP thread and two give bit-identical outputs."""
    seed = _seed(2024)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = _all_native_outputs(*shape, seed)
        torch.set_num_threads(max(2, threads))
        team = _all_native_outputs(*shape, seed)
    finally:
        torch.set_num_threads(threads)
    for k, (a, b) in enumerate(zip(single, team)):
        assert torch.equal(a, b), f"output {k} differs between 1 and {max(2, threads)} threads"


# ------------------------------------------------------------------------- 16-bit conversions
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_16_bit_pattern_survives_load_and_store(library, dtype):
    """z = mu + exp(-inf/2) * (-0) = mu for all 65536 bit patterns (NaNs stay NaN)."""
    mu = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype).reshape(-1, 1)
    logvar = torch.full_like(mu, float("-inf"))
    eps = torch.full_like(mu, -0.0)
    z, _ = native.reparameterize_kl_forward(mu, logvar, eps, None, "none")
    nan = torch.isnan(mu)
    assert torch.equal(torch.isnan(z), nan)
    assert torch.equal(z[~nan].view(torch.int16), mu[~nan].view(torch.int16))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_float32_results_round_to_nearest_even(library, dtype):
    """tc_loss backward stores g/B computed in float32: compare with PyTorch's rounding, over
    normal and subnormal values."""
    info = torch.finfo(dtype)
    grads = torch.cat([
        torch.randn(64) * 3, torch.rand(32) * info.tiny * 4, torch.tensor([info.max, -info.max, info.tiny]),
    ]).to(dtype)
    for batch in (1, 3, 7, 1000):
        logits = torch.zeros(batch, 2, dtype=dtype)
        for g in grads:
            expected = (g.float() / batch).to(dtype)
            got = native.tc_loss_backward(g.reshape(()), logits)
            assert got[0, 0].view(torch.int16) == expected.view(torch.int16), (g, batch, got[0, 0], expected)
            assert got[batch - 1, 1].view(torch.int16) == (-expected).view(torch.int16)


def test_ctypes_table_matches_header():
    """Every entry point of the argtypes table is declared in kernels/include/fastfvae.h."""
    header = os.path.join(os.path.dirname(__file__), "..", "kernels", "include", "fastfvae.h")
    if not os.path.exists(header):
        pytest.skip("kernels/ not present (installed package)")
    text = re.sub(r"/\*.*?\*/", "", open(header).read(), flags=re.S)  # drop comments
    for name, argtypes in native.ARGTYPES.items():
        assert f"ffv_status {name}(" in text, name
        declaration = text.split(f"ffv_status {name}(")[1].split(");")[0]
        declared = [part for part in declaration.replace("\n", " ").split(",") if part.strip()]
        assert len(declared) == len(argtypes), (name, len(declared), len(argtypes))
    assert all(t in (ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_int, ctypes.c_double)
               for argtypes in native.ARGTYPES.values() for t in argtypes)


def test_element_count_overflow_is_rejected_as_in_the_cuda_library(library):
    """check_numel runs in the CPU library too (it ran only in CUDA): sizes whose product
    overflows int64 are an error before any pointer is looked at (NULL pointers here)."""
    forward = library.functions["ffv_reparameterize_kl_forward"]
    status = forward(0, 2**40, 2**30, None, 1, 1, None, 1, 1, None, 0, 0, None, 1, None, None, None, 0, None)
    assert status == 1 and "more than 2^63 - 1 elements" in library.last_error(), library.last_error()
    permute = library.functions["ffv_permute_dims_forward"]
    status = permute(0, 2**40, 2**20, 2**10, None, 1, 1, 1, None, None, None, None, 0, None)
    assert status == 1 and "more than 2^63 - 1 elements" in library.last_error(), library.last_error()
