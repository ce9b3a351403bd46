"""Property-based tests (hypothesis): every op against the reference formulas over generated
shapes (B, D, G including 1), dtypes, layouts (transposed, sliced, expanded), reductions and
special values, outputs and gradients (issue 14, "the suite that finds the next ones";
DESIGN.md §8).

Expected values are fastfvae.reference evaluated in float64 on the inputs as rounded to the
tested dtype, and gradients are float64 autograd of those textbook formulas with the same
upstream gradients; the tolerance is the dtype's (conftest.TOLERANCES). The example budget is
bounded (settings below) so the file stays under a minute on a busy CPU.
"""
from __future__ import annotations

import pytest
import torch

from fastfvae import reference
import fastfvae
from conftest import FLOAT_DTYPES, TOLERANCES, require, seed_for

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

BUDGET = settings(max_examples=25, deadline=None, derandomize=True)


def _require(backend: str, op: str, dtype: torch.dtype) -> None:
    """The backends these properties cover on the CPU: native and reference. Triton serves CPU
    tensors only under its interpreter (about a second a call), where 25 examples per test would
    not fit tests/test_triton_interpret.py's time limit; its numerics are checked case by case
    in tests/test_triton.py and the op tests (and on a GPU by bench/gpu_check.sh)."""
    if backend == "triton":
        pytest.skip("properties run on native and reference (see _require)")
    require(backend, op, "cpu", dtype)

sizes = st.integers(min_value=1, max_value=9)
dtypes = st.sampled_from(FLOAT_DTYPES)
layouts = st.sampled_from(["contiguous", "transposed", "sliced", "expanded"])
seeds = st.integers(min_value=0, max_value=2**31 - 1)


# ---------------------------------------------------------------------------------------------
# Layouts: a (rows, cols) view of a base tensor with the layout's strides. The base is the leaf
# (gradients are compared on it), so the op sees the strided view, as a user's view would be.
# ---------------------------------------------------------------------------------------------
def _base_shape(rows: int, cols: int, layout: str) -> tuple[int, int]:
    return {"contiguous": (rows, cols), "transposed": (cols, rows), "sliced": (rows, 2 * cols),
            "expanded": (1, cols)}[layout]


def _view(base: torch.Tensor, rows: int, layout: str) -> torch.Tensor:
    if layout == "transposed":
        return base.t()
    if layout == "sliced":
        return base[:, ::2]
    if layout == "expanded":
        return base.expand(rows, base.shape[1])
    return base


def _bases(generator, shapes, dtype, scale=1.0, special=None):
    """float64 base tensors rounded to ``dtype`` (so both sides see the same values)."""
    out = []
    for shape in shapes:
        t = torch.randn(*shape, generator=generator, dtype=torch.float64) * scale
        if special is not None:
            t.view(-1)[0] = special
        out.append(t.to(dtype).double())
    return out


def _compare(op_fn, ref_fn, bases, dtype, views, *, gradients=True, seed=0):
    """Run ``op_fn`` on dtype leaves and ``ref_fn`` on float64 leaves of the same values, both
    through ``views``; compare outputs and (when ``gradients``) the leaves' gradients."""
    leaves = [b.to(dtype).requires_grad_(gradients) for b in bases]
    ref_leaves = [b.clone().requires_grad_(gradients) for b in bases]
    outs = op_fn(*views(leaves))
    ref_outs = ref_fn(*views(ref_leaves))
    outs, ref_outs = (outs if isinstance(outs, tuple) else (outs,)), (ref_outs if isinstance(ref_outs, tuple) else (ref_outs,))
    tol = TOLERANCES[dtype]
    for i, (out, want) in enumerate(zip(outs, ref_outs)):
        # the float64 value as the output's dtype holds it (beyond its range: +-inf)
        want = want.detach().to(out.dtype).double()
        torch.testing.assert_close(out.detach().double(), want, equal_nan=True, **tol,
                                   msg=lambda m, i=i: f"output {i} ({dtype}): {m}")
    if not gradients:
        return
    g = torch.Generator().manual_seed(seed)
    upstream = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o in outs]
    grads = torch.autograd.grad(outs, leaves, upstream, allow_unused=True)
    ref_grads = torch.autograd.grad(ref_outs, ref_leaves, [u.double() for u in upstream], allow_unused=True)
    for i, (got, want) in enumerate(zip(grads, ref_grads)):
        want = torch.zeros_like(ref_leaves[i]) if want is None else want
        got = torch.zeros_like(ref_leaves[i]) if got is None else got.double()
        torch.testing.assert_close(got, want, equal_nan=True, **tol,
                                   msg=lambda m, i=i: f"gradient of input {i} ({dtype}): {m}")


# ---------------------------------------------------------------------------------------------
# The ops
# ---------------------------------------------------------------------------------------------
@BUDGET
@given(batch=sizes, k=st.sampled_from([1, 2, 0]), dtype=dtypes, layout=layouts, seed=seeds)
def test_tc_loss_matches_reference(backend, batch, k, dtype, layout, seed):
    """k = 0 stands for (B,) logits."""
    _require(backend, "tc_loss", dtype)
    cols = max(k, 1)
    g = torch.Generator().manual_seed(seed)
    bases = _bases(g, [_base_shape(batch, cols, layout)], dtype)

    def views(ts):
        v = _view(ts[0], batch, layout)
        return (v[:, 0] if k == 0 else v,)

    _compare(lambda l: fastfvae.tc_loss(l, backend=backend), reference.tc_loss, bases, dtype, views, seed=seed)


@BUDGET
@given(batch=sizes, k=st.sampled_from([1, 2, 0]), dtype=dtypes, layout=layouts, seed=seeds,
       scale=st.sampled_from([1.0, 30.0]))
def test_discriminator_loss_matches_reference(backend, batch, k, dtype, layout, seed, scale):
    _require(backend, "discriminator_loss", dtype)
    cols = max(k, 1)
    g = torch.Generator().manual_seed(seed)
    bases = _bases(g, [_base_shape(batch, cols, layout)] * 2, dtype, scale=scale)

    def views(ts):
        vs = [_view(t, batch, layout) for t in ts]
        return tuple(v[:, 0] if k == 0 else v for v in vs)

    _compare(lambda r, p: fastfvae.discriminator_loss(r, p, backend=backend), reference.discriminator_loss,
             bases, dtype, views, seed=seed)


@BUDGET
@given(batch=sizes, dim=sizes, dtype=dtypes, layout=layouts, seed=seeds,
       reduction=st.sampled_from(reference.REDUCTIONS))
def test_reparameterize_kl_matches_reference(backend, batch, dim, dtype, layout, seed, reduction):
    _require(backend, "reparameterize_kl", dtype)
    g = torch.Generator().manual_seed(seed)
    shape = _base_shape(batch, dim, layout)
    mu, logvar, eps = _bases(g, [shape] * 3, dtype)

    def views(ts):
        return tuple(_view(t, batch, layout) for t in ts)

    _compare(lambda m, lv, e: fastfvae.reparameterize_kl(m, lv, eps=e, reduction=reduction, backend=backend),
             lambda m, lv, e: reference.reparameterize_kl(m, lv, e, reduction),
             [mu, logvar, eps], dtype, views, seed=seed)


@BUDGET
@given(groups=st.integers(min_value=0, max_value=3), batch=sizes, dim=sizes, dtype=dtypes,
       layout=st.sampled_from(["contiguous", "transposed", "expanded"]), seed=seeds)
def test_permute_dims_matches_reference_and_permutes_columns(backend, groups, batch, dim, dtype, layout, seed):
    """groups = 0 stands for a (B, D) input; otherwise (G, B, D)."""
    _require(backend, "permute_dims", dtype)
    g = torch.Generator().manual_seed(seed)
    shape = _base_shape(batch, dim, layout)
    (base,) = _bases(g, [(max(groups, 1),) + shape], dtype)

    def views(ts):
        t = ts[0]
        v = t.transpose(1, 2) if layout == "transposed" else (
            t.expand(t.shape[0], batch, dim) if layout == "expanded" else t)
        return (v[0] if groups == 0 else v,)

    leaf = base.to(dtype).requires_grad_(True)
    (z,) = views([leaf])
    torch.manual_seed(seed)
    out = fastfvae.permute_dims(z, backend=backend)
    assert out.shape == z.shape and out.dtype == z.dtype
    # every column of every group is a permutation of the input column
    torch.testing.assert_close(out.detach().sort(dim=-2).values, z.detach().sort(dim=-2).values, rtol=0, atol=0)
    # and it is the reference's permutation for the seed the op drew, with its gradient
    index = reference.philox_permutation(seed_for(seed, "cpu"), max(groups, 1), batch, dim)
    index = index[0] if groups == 0 else index

    def ref_fn(t):
        return reference.permute_dims(t, index)

    def op_fn(t):
        torch.manual_seed(seed)
        return fastfvae.permute_dims(t, backend=backend)

    _compare(op_fn, ref_fn, [base], dtype, views, seed=seed)


@BUDGET
@given(queries=sizes, components=sizes, dim=sizes, dtype=dtypes, layout=layouts, seed=seeds,
       method=st.sampled_from(reference.LOG_QZ_METHODS), dataset_extra=st.integers(0, 1000))
def test_log_qz_matches_reference(backend, queries, components, dim, dtype, layout, seed, method, dataset_extra):
    _require(backend, "log_qz", dtype)
    if method == "mss":
        components = max(components, 2)
        queries = min(queries, components)
    dataset_size = components + dataset_extra
    g = torch.Generator().manual_seed(seed)
    z, = _bases(g, [_base_shape(queries, dim, layout)], dtype)
    mu, logvar = _bases(g, [_base_shape(components, dim, layout)] * 2, dtype, scale=0.7)

    def views(ts):
        return (_view(ts[0], queries, layout), _view(ts[1], components, layout), _view(ts[2], components, layout))

    _compare(lambda a, b, c: fastfvae.log_qz_marginals(a, b, c, dataset_size=dataset_size, method=method, backend=backend),
             lambda a, b, c: reference.log_qz_marginals(a, b, c, dataset_size, method),
             [z, mu, logvar], dtype, views, seed=seed)


@BUDGET
@given(batch=sizes, dim=sizes, dtype=st.sampled_from([torch.float32, torch.float64]), seed=seeds,
       special=st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e30, -1e30]),
       op=st.sampled_from(["tc_loss", "discriminator_loss", "reparameterize_kl"]))
def test_special_values_propagate_like_the_reference(backend, batch, dim, dtype, seed, special, op):
    """A NaN, an infinity or a huge value in the input: the outputs agree with the reference."""
    _require(backend, op, dtype)
    g = torch.Generator().manual_seed(seed)
    if op == "tc_loss":
        bases = _bases(g, [(batch, 2)], dtype, special=special)
        _compare(lambda l: fastfvae.tc_loss(l, backend=backend), reference.tc_loss, bases, dtype,
                 lambda ts: ts, gradients=False)
    elif op == "discriminator_loss":
        bases = _bases(g, [(batch, 2), (batch, 2)], dtype, special=special)
        _compare(lambda r, p: fastfvae.discriminator_loss(r, p, backend=backend), reference.discriminator_loss,
                 bases, dtype, lambda ts: ts, gradients=False)
    else:
        mu, logvar, eps = _bases(g, [(batch, dim)] * 3, dtype)
        mu.view(-1)[0] = special
        _compare(lambda m, lv, e: fastfvae.reparameterize_kl(m, lv, eps=e, reduction="none", backend=backend),
                 lambda m, lv, e: reference.reparameterize_kl(m, lv, e, "none"),
                 [mu, logvar, eps], dtype, lambda ts: ts, gradients=False)


# ---------------------------------------------------------------------------------------------
# Batched autograd: jacobian(vectorize=True), autograd.grad(is_grads_batched=True) and
# torch.func.vmap over every op on the default backend. Batched tensors have no storage, so the
# kernels must never see them (the reference's torch ops run instead); the results are compared
# with the unbatched reference: float64 jacobians row by row and per-sample calls.
# ---------------------------------------------------------------------------------------------
def _batched_case(op: str, batch: int, dim: int, generator):
    """(function of float64 tensors returning one flat tensor, its reference twin, inputs)."""
    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=generator, dtype=torch.float64) * scale

    if op == "reparameterize_kl":
        eps = rand(batch, dim)

        def make(backend):
            def f(mu, logvar):
                z, kl = fastfvae.reparameterize_kl(mu, logvar, eps=eps, reduction="none", backend=backend)
                return torch.cat([z.reshape(-1), kl])
            return f
        return make, (rand(batch, dim), rand(batch, dim, scale=0.5))
    if op == "tc_loss":
        return (lambda backend: lambda l: fastfvae.tc_loss(l, backend=backend).reshape(1)), (rand(batch, 2),)
    if op == "discriminator_loss":
        return (lambda backend: lambda r, p: fastfvae.discriminator_loss(r, p, backend=backend).reshape(1)), (
            rand(batch, 2), rand(batch, 2))
    if op in ("log_qz", "log_qz_marginals"):
        def make(backend):
            def f(z, mu, logvar):
                outs = getattr(fastfvae, op)(z, mu, logvar, dataset_size=batch + 5, backend=backend)
                return torch.cat([o.reshape(-1) for o in outs])
            return f
        return make, (rand(batch, dim), rand(batch, dim), rand(batch, dim, scale=0.5))
    if op == "permute_dims":
        def make(backend):
            def f(z):
                torch.manual_seed(7)  # the same permutation on both sides
                return fastfvae.permute_dims(z, backend=backend).reshape(-1)
            return f
        return make, (rand(batch, dim),)
    raise AssertionError(op)


BATCHED_OPS = ["reparameterize_kl", "tc_loss", "discriminator_loss", "log_qz", "log_qz_marginals", "permute_dims"]


@settings(max_examples=12, deadline=None, derandomize=True)
@given(op=st.sampled_from(BATCHED_OPS), batch=st.integers(1, 4), dim=st.integers(1, 3), seed=seeds)
def test_batched_backward_of_every_op_matches_the_reference(op, batch, dim, seed):
    """jacobian(vectorize=True) and autograd.grad(is_grads_batched=True) on the default backend
    (the kernels' forward, a batched backward) equal the reference's row-by-row jacobian."""
    make, inputs = _batched_case(op, batch, dim, torch.Generator().manual_seed(seed))
    f, f_ref = make("auto"), make("reference")
    want = torch.autograd.functional.jacobian(f_ref, inputs, vectorize=False)
    got = torch.autograd.functional.jacobian(f, inputs, vectorize=True)
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, **TOLERANCES[torch.float64], msg=lambda m, i=i: f"{op} jacobian {i}: {m}")
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = f(*leaves)
    basis = torch.eye(out.numel(), dtype=out.dtype)
    rows = torch.autograd.grad(out, leaves, basis, is_grads_batched=True, allow_unused=True)
    for i, (g, w) in enumerate(zip(rows, want)):
        g = torch.zeros_like(w) if g is None else g
        torch.testing.assert_close(g, w, **TOLERANCES[torch.float64], msg=lambda m, i=i: f"{op} is_grads_batched {i}: {m}")


@settings(max_examples=12, deadline=None, derandomize=True)
@given(op=st.sampled_from([o for o in BATCHED_OPS if o != "permute_dims"] + ["discriminator_accuracy"]),
       groups=st.integers(1, 3), batch=st.integers(1, 4), dim=st.integers(1, 3), seed=seeds)
def test_vmap_of_every_op_matches_per_sample_calls(op, groups, batch, dim, seed):
    """torch.func.vmap over a leading group dimension on the default backend equals the
    reference called on each group (permute_dims draws: see the test below)."""
    g = torch.Generator().manual_seed(seed)
    if op == "discriminator_accuracy":
        f = f_ref = lambda r, p: fastfvae.discriminator_accuracy(r, p).reshape(1)
        inputs = (torch.randn(batch, 2, generator=g, dtype=torch.float64),) * 2
        inputs = (inputs[0], -inputs[1])
    else:
        make, inputs = _batched_case(op, batch, dim, g)
        f, f_ref = make("auto"), make("reference")
    stacked = [torch.stack([t * (1 + 0.1 * k) for k in range(groups)]) for t in inputs]
    got = torch.func.vmap(f)(*stacked)
    want = torch.stack([f_ref(*[s[k] for s in stacked]) for k in range(groups)])
    torch.testing.assert_close(got, want, **TOLERANCES[torch.float64])


def test_vmap_of_permute_dims_and_gather_images_on_the_default_backend():
    """permute_dims under vmap (fresh draws per group: randomness="different") permutes every
    column of every group; gather_images under vmap equals the unbatched reference."""
    z = torch.randn(3, 5, 4, dtype=torch.float64)
    out = torch.func.vmap(lambda t: fastfvae.permute_dims(t), randomness="different")(z)
    torch.testing.assert_close(out.sort(dim=1).values, z.sort(dim=1).values, rtol=0, atol=0)
    packed = torch.randint(0, 256, (6, 512), dtype=torch.uint8)
    index = torch.randint(0, 6, (2, 3))
    got = torch.func.vmap(lambda i: fastfvae.gather_images(packed, i))(index)
    want = torch.stack([reference.gather_images(packed, i, torch.float32) for i in index])
    assert torch.equal(got, want)


@pytest.mark.parametrize("out_channels", [1, 3, 4, 8])
def test_batched_backward_of_the_decoder_layer(out_channels):
    """fastfvae.layers.ConvTranspose2d (the window GEMM path at <= 4 output channels, the
    adjoint-convolution backward above): jacobian(vectorize=True) and is_grads_batched equal
    torch's layer's."""
    from fastfvae.layers import ConvTranspose2d

    torch.manual_seed(0)
    layer = ConvTranspose2d(2, out_channels, 4, 2, 1).double()
    stock = torch.nn.ConvTranspose2d(2, out_channels, 4, 2, 1).double()
    stock.load_state_dict(layer.state_dict())
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    want = torch.autograd.functional.jacobian(stock, x)
    got = torch.autograd.functional.jacobian(layer, x, vectorize=True)
    torch.testing.assert_close(got, want, **TOLERANCES[torch.float64])
    leaf = x.clone().requires_grad_()
    out = layer(leaf)
    basis = torch.eye(out.numel(), dtype=out.dtype).view(-1, *out.shape)
    (rows,) = torch.autograd.grad(out, leaf, basis, is_grads_batched=True)
    torch.testing.assert_close(rows.view(want.shape), want, **TOLERANCES[torch.float64])


# ---------------------------------------------------------------------------------------------
# The loss modules over dtypes: every term against the same module on float64 copies of the
# inputs as rounded to the dtype, within the tolerance of the dtype the terms are reduced in
# (float32 for 16-bit inputs and float32, float64 for float64; DESIGN.md §2).
# ---------------------------------------------------------------------------------------------
LOSS_MODULES = ["factorvae", "betavae", "betatcvae_mws", "betatcvae_mss", "dipvae_i", "dipvae_ii", "annealedvae"]


def _loss_call(name: str, x_recon, x, mu, logvar, z, d_z):
    from fastfvae import losses

    kl = fastfvae.reparameterize_kl(mu, logvar)[1]
    if name == "factorvae":
        return losses.FactorVAELoss(gamma=35.0)(x_recon, x, kl, d_z)
    if name == "betavae":
        return losses.BetaVAELoss(beta=4.0)(x_recon, x, kl)
    if name.startswith("betatcvae"):
        return losses.BetaTCVAELoss(dataset_size=500, method=name[-3:])(x_recon, x, z, mu, logvar)
    if name.startswith("dipvae"):
        return losses.DIPVAELoss(name.split("_")[1], lambda_od=2.0, lambda_d=5.0)(x_recon, x, kl, mu, logvar)
    return losses.AnnealedVAELoss(gamma=100.0, c_max=25.0, iteration_threshold=50)(x_recon, x, kl, 20)


@BUDGET
@given(name=st.sampled_from(LOSS_MODULES), dtype=dtypes, batch=st.integers(2, 9), dim=st.integers(1, 6),
       seed=seeds, scale=st.sampled_from([1.0, 4.0]))
def test_loss_modules_reduce_16_bit_inputs_in_float32(name, dtype, batch, dim, seed, scale):
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(batch, 1, 8, 8, generator=g, dtype=torch.float64) * 3,
              (torch.rand(batch, 1, 8, 8, generator=g, dtype=torch.float64) > 0.5).double(),
              torch.randn(batch, dim, generator=g, dtype=torch.float64) * scale + scale,
              torch.randn(batch, dim, generator=g, dtype=torch.float64) * 0.5,
              torch.randn(batch, dim, generator=g, dtype=torch.float64) * scale,
              torch.randn(batch, 2, generator=g, dtype=torch.float64)]
    rounded = [t.to(dtype) for t in inputs]
    got = _loss_call(name, *rounded)
    want = _loss_call(name, *[t.double() for t in rounded])
    reduced = torch.float64 if dtype == torch.float64 else torch.float32
    for term, g_value, w_value in zip(got._fields, got, want):
        assert g_value.dtype == reduced, f"{name}.{term}: {g_value.dtype} for {dtype} inputs"
        torch.testing.assert_close(g_value.double(), w_value, **TOLERANCES[reduced],
                                   msg=lambda m, term=term: f"{name}.{term} ({dtype}): {m}")
