"""torch.library custom ops: opcheck, and torch.compile(fullgraph=True) without graph breaks
(DESIGN.md §6). Triton under TRITON_INTERPRET=1 cannot be traced (fake tensors have no data),
so compile is tested here with the native and reference backends."""
from __future__ import annotations

import importlib

import pytest
import torch
import torch._inductor.config

import fastfvae
from fastfvae import backends
from fastfvae.registry import OPS
from conftest import require

CPU = torch.device("cpu")


@pytest.mark.parametrize("op", OPS)
def test_opcheck(backend, op):
    """torch.library.opcheck on every custom op of every op of the registry, with the cases its
    own test module gives (``opcheck_cases(backend)`` in tests/test_<op>.py)."""
    if backend == "triton":
        pytest.skip("Triton under TRITON_INTERPRET=1 cannot be traced with fake tensors (DESIGN.md §6)")
    require(backend, op, "cpu", torch.float32)
    cases = importlib.import_module(f"test_{op}").opcheck_cases(backend)
    assert cases, f"tests/test_{op}.py gives no opcheck case"
    for custom_op, args in cases:
        torch.library.opcheck(custom_op, args)


def _loss_step(mu, logvar, mu2, logvar2, weight, backend):
    """A FactorVAE loss head: every public op, in the shape a training step uses them."""
    z, kl = fastfvae.reparameterize_kl(mu, logvar, backend=backend)
    tc = fastfvae.tc_loss(z @ weight, backend=backend)
    z2, _ = fastfvae.reparameterize_kl(mu2, logvar2, backend=backend)
    z_perm = fastfvae.permute_dims(z2.detach(), backend=backend)
    d_loss = fastfvae.discriminator_loss(z.detach() @ weight, z_perm @ weight, backend=backend)
    return kl + 35.0 * tc + d_loss


def _inputs():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 6, generator=g, requires_grad=True) for _ in range(4)] + [
        torch.randn(6, 2, generator=g, requires_grad=True)
    ]


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compile_fullgraph_matches_eager(backend, compiler):
    require(backend, "permute_dims", "cpu", torch.float32)
    if backend == "triton":
        pytest.skip("Triton kernels are traced on CUDA only (see module docstring)")
    if compiler == "inductor" and backend != "native" and backends.reason_not_served("native", "tc_loss", CPU, torch.float32) is None:
        pytest.skip("one inductor compile (native) is enough for CI time")
    torch._dynamo.reset()
    eager_inputs, compiled_inputs = _inputs(), _inputs()
    torch.manual_seed(3)
    expected = _loss_step(*eager_inputs, backend)
    expected.backward()
    compiled = torch.compile(_loss_step, fullgraph=True, backend=compiler)
    # Inductor otherwise draws the seed with its own RNG; the eager stream is needed to compare.
    with torch._inductor.config.patch(fallback_random=True):
        torch.manual_seed(3)
        actual = compiled(*compiled_inputs, backend)
        actual.backward()
    torch.testing.assert_close(actual, expected)
    for a, e in zip(compiled_inputs, eager_inputs):
        torch.testing.assert_close(a.grad, e.grad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graphs_draw_fresh_numbers_each_replay():
    """mode="reduce-overhead" replays a CUDA graph: seeds read from device memory must change."""
    torch._dynamo.reset()
    mu = torch.zeros(64, 10, device="cuda")
    step = torch.compile(lambda m: fastfvae.permute_dims(fastfvae.reparameterize_kl(m, m)[0]), mode="reduce-overhead")
    outs = [step(mu).clone() for _ in range(4)]
    assert not torch.equal(outs[-1], outs[-2])


_FIRST_USE = """
import torch, fastfvae
def step(mu, logvar, w):
    z, kl = fastfvae.reparameterize_kl(mu, logvar, backend=BACKEND)
    z_perm = fastfvae.permute_dims(z, backend=BACKEND)
    log_qz, _ = fastfvae.log_qz(z, mu, logvar, dataset_size=100, backend=BACKEND)
    return (kl + fastfvae.tc_loss(z @ w, backend=BACKEND)
            + fastfvae.discriminator_loss(z @ w, z_perm @ w, backend=BACKEND) + log_qz.mean())
mu = torch.randn(8, 3, requires_grad=True)
out = torch.compile(step, fullgraph=True, backend="aot_eager")(mu, torch.zeros(8, 3), torch.randn(3, 2))
out.backward()
assert torch.isfinite(out) and mu.grad is not None
print("compiled first use ok")
"""


def test_compile_fullgraph_as_the_first_use_in_a_fresh_process(backend):
    """Nothing may be imported inside the traced code (dispatch runs in the op)."""
    require(backend, "permute_dims", "cpu", torch.float32)
    if backend == "triton":
        pytest.skip("Triton kernels are traced on CUDA only (see module docstring)")
    import subprocess
    import sys

    code = _FIRST_USE.replace("BACKEND", repr(backend))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compiled first use ok" in result.stdout


def _random_step(mu, logvar, backend):
    z, _ = fastfvae.reparameterize_kl(mu, logvar, backend=backend)
    # the same op twice on the same tensor: two draws, never merged into one
    return z, fastfvae.permute_dims(z, backend=backend), fastfvae.permute_dims(z, backend=backend)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_inductor_draws_what_eager_draws(backend, requires_grad):
    """Under the default inductor (fallback_random=False) the same manual_seed
    gives the same eps and permutations as eager: the seeds come from our own custom op, which
    inductor does not replace with its RNG, and each call keeps its own draw."""
    require(backend, "permute_dims", "cpu", torch.float32)
    if backend == "triton":
        pytest.skip("Triton kernels are traced on CUDA only (see module docstring)")
    assert not torch._inductor.config.fallback_random
    torch._dynamo.reset()
    mu = torch.randn(16, 4, requires_grad=requires_grad)
    logvar = torch.randn(16, 4)
    torch.manual_seed(3)
    eager = _random_step(mu, logvar, backend)
    torch.manual_seed(3)
    compiled = torch.compile(_random_step, fullgraph=True)(mu, logvar, backend)
    for e, c in zip(eager, compiled):
        assert torch.equal(e, c)
    assert not torch.equal(compiled[1], compiled[2])
    # and the generator advanced as far as in eager mode
    after_compiled = torch.rand(3)
    torch.manual_seed(3)
    _random_step(mu, logvar, backend)
    assert torch.equal(after_compiled, torch.rand(3))
