"""torch.library custom ops: opcheck, and torch.compile(fullgraph=True) without graph breaks
(DESIGN.md §6). Triton under TRITON_INTERPRET=1 cannot be traced (fake tensors have no data),
so compile is tested here with the native and reference backends."""
from __future__ import annotations

import pytest
import torch
import torch._inductor.config

import fastfvae
from fastfvae import backends
from conftest import require

CPU = torch.device("cpu")


def _op_cases(backend):
    g = torch.Generator().manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, generator=g, requires_grad=True)

    seed = torch.tensor([12345])
    ops = torch.ops.fastfvae
    return [
        ("reparameterize_kl", ops.reparameterize_kl.default, (t(6, 5), t(6, 5), None, seed, "mean", backend)),
        ("reparameterize_kl", ops.reparameterize_kl.default, (t(6, 5), t(6, 5), t(6, 5), seed, "none", backend)),
        ("reparameterize_kl", ops.reparameterize_kl_backward.default,
         (torch.randn(6, 5), torch.randn(()), torch.randn(6, 5), torch.randn(6, 5), seed, "sum", "drawn",
          backend)),
        ("reparameterize_kl", ops.reparameterize_kl_backward.default,
         (torch.randn(6, 5), torch.randn(6), torch.randn(6, 5), torch.randn(6, 5), torch.randn(6, 5), "none",
          "given_needs_grad", backend)),
        ("permute_dims", ops.permute_dims.default, (t(2, 7, 3), seed, backend)),
        ("permute_dims", ops.permute_dims_backward.default,
         (torch.randn(1, 4, 2), torch.tensor([[[1, 0], [0, 3], [3, 2], [2, 1]]], dtype=torch.int32), backend)),
        ("tc_loss", ops.tc_loss.default, (t(8, 2), backend)),
        ("tc_loss", ops.tc_loss_backward.default, (torch.randn(()), torch.randn(8, 1), backend)),
        ("discriminator_loss", ops.discriminator_loss.default, (t(8, 2), t(8, 2), backend)),
        ("discriminator_loss", ops.discriminator_loss_backward.default, (torch.randn(()), torch.randn(8, 1), torch.randn(8, 1), backend)),
    ]


@pytest.mark.parametrize("case", range(10))
def test_opcheck(backend, case):
    op_name, op, args = _op_cases(backend)[case]
    require(backend, op_name, "cpu", torch.float32)
    torch.library.opcheck(op, args)


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
    """issue 14.12: nothing may be imported inside the traced code (dispatch runs in the op)."""
    require(backend, "permute_dims", "cpu", torch.float32)
    if backend == "triton":
        pytest.skip("Triton kernels are traced on CUDA only (see module docstring)")
    import subprocess
    import sys

    code = _FIRST_USE.replace("BACKEND", repr(backend))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compiled first use ok" in result.stdout
