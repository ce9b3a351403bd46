"""Triton-specific tests: code paths of the Triton launchers that the shared op matrix does not
reach on its own (block loops, the two-launch reduction, the permute_dims fallback above the
in-kernel sort limit, strided and stride-0 inputs, extreme logits).

They need CUDA or Triton's interpreter. The interpreter must be on before the kernels are
decorated, so on a CPU machine run this file in its own process:

    TRITON_INTERPRET=1 python -m pytest tests/test_triton.py -q

Sizes stay small (the interpreter runs numpy per op); block-size constants are monkeypatched
down so that small inputs still cross block and limit boundaries.
"""
from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Every test but the compile checks at the end runs kernels.
needs_runtime = pytest.mark.skipif(
    not INTERPRET and not torch.cuda.is_available(),
    reason="Triton kernels need CUDA, or TRITON_INTERPRET=1 set before the process starts "
    "(TRITON_INTERPRET=1 python -m pytest tests/test_triton.py)",
)

if INTERPRET or torch.cuda.is_available():
    pytest.importorskip("triton")
    import fastfvae
    from fastfvae import reference as ref
    from fastfvae.backends import reference as R
    from fastfvae.backends import triton as T
    from fastfvae.backends.triton import discriminator_loss as disc_mod
    from fastfvae.backends.triton import permute_dims as perm_mod
    from fastfvae.backends.triton import reparameterize_kl as rkl_mod
    from fastfvae.backends.triton import tc_loss as tc_mod

DEVICE = "cpu" if INTERPRET else "cuda"

# One tolerance table: both backends compute half types in float32 and round once, so they may
# differ by float32 summation order plus one rounding of the output.
TOLERANCES = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
}
DTYPES = list(TOLERANCES)


# eps drawn in a kernel is float32 Box-Muller (as tl.randn): the kernel's log/cos and torch's may
# differ in the last float32 bit, so a z built from drawn eps is only float32-exact even in float64.
DRAWN_EPS_TOLERANCE = dict(rtol=1e-5, atol=2e-6)


def assert_close(actual, expected, dtype, tolerance=None):
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual, expected, **(tolerance or TOLERANCES[dtype]))


def make_seed():
    return torch.randint(2**62, (1,), dtype=torch.int64, device=DEVICE)


def randn(*shape, dtype=torch.float32):
    return torch.randn(shape, dtype=torch.float64, device=DEVICE).to(dtype)


def strided(t):
    """A non-contiguous view with t's values: every other column of a wider buffer."""
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    view = wide[..., ::2]
    view.copy_(t)
    assert not view.is_contiguous()
    return view


# =============================================================================================
# reparameterize_kl
# =============================================================================================
@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 4 rows x 4 columns, so B = 13, D = 6 loops over 4 row blocks x 2 column chunks,
    the last of each partly masked."""
    monkeypatch.setattr(rkl_mod, "TILE_ELEMENTS", 16)
    monkeypatch.setattr(rkl_mod, "MAX_BLOCK_D", 4)


@needs_runtime
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("in_kernel_reduce", [True, False], ids=["one-launch", "two-launch"])
def test_reparameterize_kl_blocks_and_reduction_paths(small_tiles, monkeypatch, dtype, reduction, in_kernel_reduce):
    monkeypatch.setattr(rkl_mod, "REDUCE_IN_KERNEL_MAX_ELEMENTS", 10**9 if in_kernel_reduce else 0)
    batch, dim = 13, 6
    mu, logvar = randn(batch, dim, dtype=dtype), 0.5 * randn(batch, dim, dtype=dtype)
    seed = make_seed()
    for eps in (None, randn(batch, dim, dtype=dtype)):
        z, kl = T.reparameterize_kl_forward(mu, logvar, eps, seed, reduction)
        z_ref, kl_ref = R.reparameterize_kl_forward(mu, logvar, eps, seed, reduction)
        assert z.is_contiguous() and kl.is_contiguous()
        drawn = eps is None and dtype == torch.float64
        assert_close(z, z_ref, dtype, DRAWN_EPS_TOLERANCE if drawn else None)
        assert_close(kl, kl_ref, dtype)
        # The backward with the same eps: given, or regenerated from the seed (the tiles differ
        # between forward and backward, the Philox counters do not).
        grad_z = randn(batch, dim, dtype=dtype)
        grad_kl = randn(*kl.shape, dtype=dtype)
        got = T.reparameterize_kl_backward(grad_z, grad_kl, mu, logvar, eps, seed, reduction, True)
        want = R.reparameterize_kl_backward(grad_z, grad_kl, mu, logvar, eps, seed, reduction, True)
        for g, w in zip(got, want):
            assert_close(g, w, dtype, DRAWN_EPS_TOLERANCE if drawn else None)


@needs_runtime
def test_reparameterize_kl_in_kernel_eps_is_the_philox_stream(small_tiles):
    """eps drawn in the kernel equals reference.philox_randn at offsets i*D + d, whatever the tile."""
    batch, dim = 13, 10
    mu = torch.zeros(batch, dim, dtype=torch.float64, device=DEVICE)
    logvar = torch.zeros_like(mu)
    seed = make_seed()
    z, _ = T.reparameterize_kl_forward(mu, logvar, None, seed, "mean")
    offsets = torch.arange(batch * dim, dtype=torch.int64, device=DEVICE).reshape(batch, dim)
    torch.testing.assert_close(z, ref.philox_randn(seed, offsets).double(), **DRAWN_EPS_TOLERANCE)
    again, _ = T.reparameterize_kl_forward(mu, logvar, None, seed, "mean")
    assert torch.equal(z, again)


@needs_runtime
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reparameterize_kl_strided_and_stride0_inputs(dtype):
    batch, dim = 9, 6
    mu = randn(dim, batch, dtype=dtype).t()  # transposed: strides (1, B)
    logvar = strided(0.5 * randn(batch, dim, dtype=dtype))
    eps = strided(randn(batch, dim, dtype=dtype))
    seed = make_seed()
    for reduction in ("mean", "none"):
        z, kl = T.reparameterize_kl_forward(mu, logvar, eps, seed, reduction)
        z_ref, kl_ref = R.reparameterize_kl_forward(mu, logvar, eps, seed, reduction)
        assert_close(z, z_ref, dtype)
        assert_close(kl, kl_ref, dtype)
        # Gradients as autograd hands them over from a sum(): expanded scalars, stride 0.
        grad_z = randn(1, 1, dtype=dtype).expand(batch, dim)
        grad_kl = randn(dtype=dtype) if reduction == "mean" else randn(1, dtype=dtype).expand(batch)
        got = T.reparameterize_kl_backward(grad_z, grad_kl, mu, logvar, eps, None, reduction, True)
        want = R.reparameterize_kl_backward(grad_z, grad_kl, mu, logvar, eps, None, reduction, True)
        for g, w in zip(got, want):
            assert g.is_contiguous()
            assert_close(g, w, dtype)


@needs_runtime
def test_reparameterize_kl_backward_skips_grad_eps_when_not_needed():
    mu, logvar = randn(5, 3), randn(5, 3)
    seed = make_seed()
    grad_mu, grad_logvar, grad_eps = T.reparameterize_kl_backward(
        randn(5, 3), randn(), mu, logvar, None, seed, "sum", False
    )
    assert grad_eps is None and grad_mu.shape == grad_logvar.shape == (5, 3)


# =============================================================================================
# permute_dims
# =============================================================================================
def check_permutation(z, seed, dtype):
    """Forward (with and without index) and backward against the reference, exactly."""
    groups, batch, dim = z.shape
    out, index = T.permute_dims_forward(z, seed, True)
    out_ref, index_ref = R.permute_dims_forward(z, seed, True)
    assert index.dtype == torch.int32
    assert torch.equal(index, index_ref), (index - index_ref).nonzero()[:5]
    assert torch.equal(out, out_ref)
    out_only, no_index = T.permute_dims_forward(z, seed, False)
    assert no_index is None and torch.equal(out_only, out_ref)
    grad_out = randn(groups, batch, dim, dtype=dtype)
    assert torch.equal(T.permute_dims_backward(grad_out, index), R.permute_dims_backward(grad_out, index_ref))
    if groups == 1:  # (B, D), as the public function hands a 2-D z on: the same draws as group 0
        out_2d, index_2d = T.permute_dims_forward(z[0], seed, True)
        assert torch.equal(out_2d, out_ref[0]) and torch.equal(index_2d, index_ref[0])
        assert torch.equal(T.permute_dims_backward(grad_out[0], index_2d),
                           R.permute_dims_backward(grad_out, index_ref)[0])


@needs_runtime
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 2, 3), (1, 16, 5), (2, 17, 3), (1, 37, 2)])
@pytest.mark.parametrize("sort_limit", [4096, 16], ids=["in-kernel", "fallback-above-16"])
def test_permute_dims_matches_reference_in_both_paths(monkeypatch, shape, sort_limit):
    """B <= limit sorts in the kernel, B > limit takes the key kernel + torch.sort + gather path;
    both must reproduce reference.philox_permutation bit for bit (B = 16 sits on the limit)."""
    monkeypatch.setattr(perm_mod, "SORT_IN_KERNEL_MAX_B", sort_limit)
    check_permutation(randn(*shape), make_seed(), torch.float32)


@needs_runtime
@pytest.mark.parametrize("dtype", DTYPES)
def test_permute_dims_dtypes_small_tiles(monkeypatch, dtype):
    """Column tiles smaller than D and, in the fallback, row tiles smaller than B."""
    monkeypatch.setattr(perm_mod, "SORT_TILE_ELEMENTS", 32)  # BLOCK_D = 32 // 16 = 2 < D
    check_permutation(randn(1, 11, 3, dtype=dtype), make_seed(), dtype)
    monkeypatch.setattr(perm_mod, "SORT_IN_KERNEL_MAX_B", 8)
    monkeypatch.setattr(perm_mod, "TILE_B", 4)
    monkeypatch.setattr(perm_mod, "TILE_D", 2)
    check_permutation(randn(2, 11, 5, dtype=dtype), make_seed(), dtype)


@needs_runtime
@pytest.mark.parametrize("sort_limit", [4096, 4], ids=["in-kernel", "fallback"])
def test_permute_dims_strided_and_stride0_inputs(monkeypatch, sort_limit):
    monkeypatch.setattr(perm_mod, "SORT_IN_KERNEL_MAX_B", sort_limit)
    groups, batch, dim = 2, 11, 4
    z = strided(randn(groups, batch, dim))
    seed = make_seed()
    out, index = T.permute_dims_forward(z, seed, True)
    out_ref, index_ref = R.permute_dims_forward(z, seed, True)
    assert torch.equal(out, out_ref) and torch.equal(index, index_ref)
    grad_out = randn(1, 1, dim).expand(groups, batch, dim)  # stride 0 over groups and rows
    assert torch.equal(T.permute_dims_backward(grad_out, index), R.permute_dims_backward(grad_out, index))
    transposed_index = index.transpose(1, 2).contiguous().transpose(1, 2)  # strided int32 index
    assert torch.equal(T.permute_dims_backward(grad_out, transposed_index), R.permute_dims_backward(grad_out, index))


@needs_runtime
def test_permute_dims_public_op_on_triton():
    """Through fastfvae.permute_dims: same permutation as the reference for one torch seed, and
    the gradient is scattered back through it."""
    z = randn(21, 4).requires_grad_()
    torch.manual_seed(7)
    out = fastfvae.permute_dims(z, backend="triton")
    torch.manual_seed(7)
    out_ref = fastfvae.permute_dims(z, backend="reference")
    assert torch.equal(out, out_ref)
    weights = randn(21, 4)
    (grad,) = torch.autograd.grad((out * weights).sum(), z)
    (grad_ref,) = torch.autograd.grad((out_ref * weights).sum(), z)
    assert torch.equal(grad, grad_ref)


# =============================================================================================
# tc_loss and discriminator_loss
# =============================================================================================
@needs_runtime
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("batch", [1, 37])
def test_losses_loop_over_blocks(monkeypatch, dtype, k, batch):
    """BLOCK = 8, so B = 37 loops 5 times in the forward and takes 5 programs in the backward."""
    monkeypatch.setattr(tc_mod, "BLOCK", 8)
    monkeypatch.setattr(disc_mod, "BLOCK", 8)
    logits, real, perm = (3 * randn(batch, k, dtype=dtype) for _ in range(3))
    grad = randn(dtype=dtype)
    assert_close(T.tc_loss_forward(logits), R.tc_loss_forward(logits), dtype)
    assert_close(T.tc_loss_backward(grad, logits), R.tc_loss_backward(grad, logits), dtype)
    assert_close(T.discriminator_loss_forward(real, perm), R.discriminator_loss_forward(real, perm), dtype)
    got = T.discriminator_loss_backward(grad, real, perm)
    want = R.discriminator_loss_backward(grad, real, perm)
    for g, w in zip(got, want):
        assert_close(g, w, dtype)


@needs_runtime
@pytest.mark.parametrize("k", [1, 2])
def test_losses_strided_logits(k):
    batch = 13
    logits, real, perm = (strided(randn(batch, k)) for _ in range(3))
    grad = randn()
    assert_close(T.tc_loss_forward(logits), R.tc_loss_forward(logits), torch.float32)
    assert_close(T.tc_loss_backward(grad, logits), R.tc_loss_backward(grad, logits), torch.float32)
    assert_close(T.discriminator_loss_forward(real, perm), R.discriminator_loss_forward(real, perm), torch.float32)
    for g, w in zip(T.discriminator_loss_backward(grad, real, perm), R.discriminator_loss_backward(grad, real, perm)):
        assert g.is_contiguous()
        assert_close(g, w, torch.float32)


@needs_runtime
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 2])
def test_discriminator_loss_extreme_logits_stay_finite(dtype, k):
    """softplus / sigmoid evaluated without overflow: logits of +-1e4 match the reference."""
    real = torch.tensor([1e4, -1e4, 30.0, -30.0, 0.0], dtype=dtype, device=DEVICE).repeat_interleave(k).reshape(5, k)
    perm = real.flip(0) * torch.tensor([1.0, -1.0], dtype=dtype, device=DEVICE)[:k]
    grad = torch.tensor(1.5, dtype=dtype, device=DEVICE)
    loss = T.discriminator_loss_forward(real, perm)
    assert torch.isfinite(loss)
    assert_close(loss, R.discriminator_loss_forward(real, perm), dtype)
    for g, w in zip(T.discriminator_loss_backward(grad, real, perm), R.discriminator_loss_backward(grad, real, perm)):
        assert torch.isfinite(g).all()
        assert_close(g, w, dtype)


# =============================================================================================
# availability
# =============================================================================================
@needs_runtime
def test_why_not(monkeypatch):
    assert T.availability() is None
    assert T.why_not("tc_loss", torch.device("cuda"), torch.float16) is None
    assert "no Triton kernel" in T.why_not("no_such_op", torch.device("cuda"), torch.float32)
    assert "mps" in T.why_not("tc_loss", torch.device("mps"), torch.float32)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET=1" in T.why_not("tc_loss", torch.device("cpu"), torch.float32)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    expected = None if INTERPRET else "after"
    reason = T.why_not("tc_loss", torch.device("cpu"), torch.float32)
    assert reason is None if expected is None else expected in reason


# =============================================================================================
# compiled GPU code, checked without a GPU
# =============================================================================================
INTEGER_POINTERS = {"seed_ptr": "*i64", "keys_ptr": "*i64", "sorted_keys_ptr": "*i64", "index_ptr": "*i32"}


def _compile_cases():
    """name -> (module, kernel, float pointer type, constexprs, num_warps): every constexpr branch
    once, each compute dtype, the largest in-kernel sort tile, and cases with every int argument
    specialised to the constant 1 (what the JIT does for B = 1, D = 1, unit strides)."""
    rkl, perm, tc, disc = "reparameterize_kl", "permute_dims", "tc_loss", "discriminator_loss"
    fwd, bwd = "_reparameterize_kl_forward_kernel", "_reparameterize_kl_backward_kernel"
    tile = dict(BLOCK_B=64, BLOCK_D=16)
    return {
        "rkl-fwd-draw-reduce-f32": (rkl, fwd, "*fp32", dict(HAS_EPS=False, REDUCE=True, COMPUTE="fp32", **tile), 4),
        "rkl-fwd-eps-rows-f64": (rkl, fwd, "*fp64", dict(HAS_EPS=True, REDUCE=False, COMPUTE="fp64", **tile), 4),
        "rkl-fwd-draw-rows-bf16": (rkl, fwd, "*bf16", dict(HAS_EPS=False, REDUCE=False, COMPUTE="fp32", **tile), 4),
        "rkl-fwd-ints-1": (rkl, fwd, "*fp16", dict(HAS_EPS=False, REDUCE=True, COMPUTE="fp32", ones=True, **tile), 4),
        "common-sum": ("_common", "_sum_kernel", "*fp32", dict(BLOCK=1024), 4),
        "rkl-bwd-eps-f32": (rkl, bwd, "*fp32", dict(HAS_EPS=True, NEED_EPS=True, COMPUTE="fp32", **tile), 4),
        "rkl-bwd-draw-f64": (rkl, bwd, "*fp64", dict(HAS_EPS=False, NEED_EPS=False, COMPUTE="fp64", **tile), 4),
        "rkl-bwd-bf16-ints-1": (rkl, bwd, "*bf16", dict(HAS_EPS=False, NEED_EPS=False, COMPUTE="fp32", ones=True, **tile), 4),
        "perm-sort-4096": (perm, "_permute_dims_sort_kernel", "*fp32", dict(NEED_INDEX=True, BLOCK_B=4096, BLOCK_D=1), 8),
        "perm-sort-ints-1": (perm, "_permute_dims_sort_kernel", "*fp16", dict(NEED_INDEX=False, ones=True, **tile), 4),
        "perm-keys": (perm, "_permute_dims_keys_kernel", "*fp32", tile, 4),
        "perm-gather-f64": (perm, "_permute_dims_gather_kernel", "*fp64", dict(NEED_INDEX=True, **tile), 4),
        "perm-bwd-bf16": (perm, "_permute_dims_backward_kernel", "*bf16", tile, 4),
        "tc-fwd-k2-f64": (tc, "_tc_loss_forward_kernel", "*fp64", dict(K=2, PARTIAL=False, COMPUTE="fp64", BLOCK=1024), 4),
        "tc-fwd-partial-f32": (tc, "_tc_loss_forward_kernel", "*fp32", dict(K=2, PARTIAL=True, COMPUTE="fp32", BLOCK=1024), 4),
        "tc-bwd-k1-f16": (tc, "_tc_loss_backward_kernel", "*fp16", dict(K=1, COMPUTE="fp32", BLOCK=1024), 4),
        "disc-fwd-k1-bf16": (disc, "_discriminator_loss_forward_kernel", "*bf16", dict(K=1, PARTIAL=False, COMPUTE="fp32", BLOCK=1024), 4),
        "disc-fwd-partial-k2-f32": (disc, "_discriminator_loss_forward_kernel", "*fp32", dict(K=2, PARTIAL=True, COMPUTE="fp32", BLOCK=1024), 4),
        "disc-bwd-k2-f64": (disc, "_discriminator_loss_backward_kernel", "*fp64", dict(K=2, COMPUTE="fp64", BLOCK=1024), 4),
        # log_qz as the launcher sizes it at M = K = 1024: D = 10 float32 (4 warps), float64 (8 warps)
        "logqz-fwd-d10-f32": ("log_qz", "_log_qz_forward_kernel", "*fp32",
                              dict(MSS=False, COMPUTE="fp32", BLOCK_M=16, BLOCK_K=16, BLOCK_D=16), 4),
        "logqz-bwd-z-d10-f64": ("log_qz", "_log_qz_backward_z_kernel", "*fp64",
                                dict(MSS=True, COMPUTE="fp64", BLOCK_M=16, BLOCK_K=16, BLOCK_D=16), 8),
        "logqz-bwd-comp-d1024-f32": ("log_qz", "_log_qz_backward_components_kernel", "*fp32",
                                     dict(MSS=False, COMPUTE="fp32", BLOCK_M=2, BLOCK_K=2, BLOCK_D=1024), 8),
    }


@pytest.mark.skipif(INTERPRET, reason="under TRITON_INTERPRET=1 the kernels are interpreted, not compiled")
@pytest.mark.parametrize("case", list(_compile_cases()))
def test_kernel_compiles_for_sm90(case):
    """Lower each kernel through Triton's full pipeline to an sm_90 cubin (ptxas ships with
    triton; no GPU needed). The interpreter does not catch what only the compiler rejects
    (non-constexpr globals, type rules of the specialised signature, register limits)."""
    import importlib

    triton = pytest.importorskip("triton")
    tl = pytest.importorskip("triton.language")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module_name, kernel_name, float_pointer, constexprs, num_warps = _compile_cases()[case]
    kernel = getattr(importlib.import_module(f"fastfvae.backends.triton.{module_name}"), kernel_name)
    constexprs = dict(constexprs)
    ints_are_one = constexprs.pop("ones", False)
    if "COMPUTE" in constexprs:
        constexprs["COMPUTE"] = tl.float64 if constexprs["COMPUTE"] == "fp64" else tl.float32
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = INTEGER_POINTERS.get(name, float_pointer)
        elif ints_are_one:
            signature[name] = "constexpr"
            constexprs[name] = 1
        else:
            signature[name] = "i32"
    compiled = triton.compile(
        ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps}
    )
    assert compiled.asm["cubin"]


# =============================================================================================
# Grid-axis limits: a clear ValueError, not CUDA's bare "invalid argument"
# =============================================================================================
def test_grid_over_cuda_axis_limits_is_a_clear_error():
    from fastfvae.backends.triton._common import checked_grid

    assert checked_grid((5, 65535, 1), "op") == (5, 65535, 1)
    with pytest.raises(ValueError, match="grid axis 2.*limit of 65535"):
        checked_grid((1, 1, 70000), "permute_dims")
    with pytest.raises(ValueError, match="grid axis 1"):
        checked_grid((1, 65536), "op")



# =============================================================================================
# Two-stage deterministic reductions: a grid of partial sums, then one program
# =============================================================================================
@needs_runtime
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_reductions_over_many_programs(monkeypatch, dtype):
    """With 8 rows per program, B = 37 spreads every batch sum over 5 programs (the last one
    partly masked) and a second launch adds the partials: values equal the reference's and
    repeated calls are bitwise equal."""
    from fastfvae.backends.triton import _common

    monkeypatch.setattr(_common, "ROWS_PER_PROGRAM", 8)
    batch = 37
    for k in (1, 2):
        logits, other = randn(batch, k, dtype=dtype), randn(batch, k, dtype=dtype)
        tc = T.tc_loss_forward(logits)
        assert_close(tc, R.tc_loss_forward(logits), dtype)
        assert torch.equal(tc, T.tc_loss_forward(logits))
        loss = T.discriminator_loss_forward(logits, other)
        assert_close(loss, R.discriminator_loss_forward(logits, other), dtype)
        assert torch.equal(loss, T.discriminator_loss_forward(logits, other))
    monkeypatch.setattr(rkl_mod, "REDUCE_IN_KERNEL_MAX_ELEMENTS", 0)
    mu, logvar, eps = randn(batch, 3, dtype=dtype), randn(batch, 3, dtype=dtype), randn(batch, 3, dtype=dtype)
    for reduction in ("mean", "sum"):
        _, kl = T.reparameterize_kl_forward(mu, logvar, eps, make_seed(), reduction)
        assert_close(kl, R.reparameterize_kl_forward(mu, logvar, eps, None, reduction)[1], dtype)


@needs_runtime
def test_sum_into_adds_partials_in_a_fixed_order(monkeypatch):
    from fastfvae.backends.triton import _common

    monkeypatch.setattr(_common, "ROWS_PER_PROGRAM", 16)
    values = randn(1000, dtype=torch.float64)
    out = torch.empty((), dtype=torch.float64, device=DEVICE)
    _common.sum_into(values, out, 7)
    torch.testing.assert_close(out, values.sum() / 7, rtol=1e-12, atol=1e-12)
