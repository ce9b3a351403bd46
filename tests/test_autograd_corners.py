"""Autograd corners of the ops (DESIGN.md §6): double backward,
torch.func transforms, in-place edits of the outputs. Gradients are compared with float64
autograd of the textbook formulas (fastfvae.reference) on fresh random inputs."""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import fastfvae
from fastfvae import reference
from conftest import require

F64 = torch.float64


def _leaf_on(*shape, scale=1.0, device="cpu"):
    return (torch.randn(*shape, dtype=F64) * scale).to(device).requires_grad_(True)


def _leaf(*shape, scale=1.0):
    return _leaf_on(*shape, scale=scale)


def _op_functions(backend, device="cpu"):
    """name -> (function of float64 leaves, the leaves); every op, deterministic (eps given,
    permute_dims under a fixed seed)."""
    def permute(z):
        torch.manual_seed(5)
        return fastfvae.permute_dims(z, backend=backend)

    def reparameterize(mu, logvar, eps):
        z, kl = fastfvae.reparameterize_kl(mu, logvar, eps=eps, reduction="none", backend=backend)
        return z, kl

    def _leaf(*shape, scale=1.0):
        return _leaf_on(*shape, scale=scale, device=device)

    return {
        "tc_loss_2": (lambda l: fastfvae.tc_loss(l, backend=backend), (_leaf(7, 2),)),
        "tc_loss_1": (lambda l: fastfvae.tc_loss(l, backend=backend), (_leaf(7),)),
        "discriminator_loss_2": (lambda r, p: fastfvae.discriminator_loss(r, p, backend=backend), (_leaf(6, 2), _leaf(6, 2))),
        "discriminator_loss_1": (lambda r, p: fastfvae.discriminator_loss(r, p, backend=backend), (_leaf(6, 1), _leaf(6, 1))),
        "reparameterize_kl": (reparameterize, (_leaf(5, 3), _leaf(5, 3, scale=0.5), _leaf(5, 3))),
        "permute_dims": (permute, (_leaf(6, 3),)),
        "log_qz": (lambda z, m, lv: fastfvae.log_qz(z, m, lv, dataset_size=20, backend=backend),
                   (_leaf(4, 3), _leaf(5, 3), _leaf(5, 3, scale=0.3))),
    }


OPS = ["tc_loss_2", "tc_loss_1", "discriminator_loss_2", "discriminator_loss_1", "reparameterize_kl",
       "permute_dims", "log_qz"]


@pytest.mark.parametrize("name", OPS)
def test_double_backward_gradgradcheck(backend, name, device):
    """create_graph=True gives the second-order terms, checked numerically, on the
    CPU and (where there is one) on a GPU, where the Triton kernels run compiled."""
    if backend == "triton" and device == "cpu":
        pytest.skip("gradgradcheck's hundreds of calls do not fit the Triton interpreter's time budget")
    require(backend, name.rsplit("_", 1)[0] if name[-1].isdigit() else name, device, F64)
    fn, leaves = _op_functions(backend, device)[name]
    assert gradcheck(fn, leaves)
    assert gradgradcheck(fn, leaves)


def test_gradient_penalty_matches_the_textbook_formula(backend):
    """The discriminator's gradient penalty: d/dw of ||dL/dx||^2 with
    L = discriminator_loss(x W, x' W) equals float64 autograd of the reference formula."""
    if backend == "triton":
        pytest.skip("the double backward runs the reference's backward for every backend")
    require(backend, "discriminator_loss", "cpu", F64)
    x, x_perm, weight = _leaf(8, 3), _leaf(8, 3), _leaf(3, 2)

    def penalty(loss_fn):
        loss = loss_fn(x @ weight, x_perm @ weight)
        (grad_x,) = torch.autograd.grad(loss, x, create_graph=True)
        return torch.autograd.grad(grad_x.pow(2).sum(), weight)[0]

    got = penalty(lambda r, p: fastfvae.discriminator_loss(r, p, backend=backend))
    want = penalty(reference.discriminator_loss)
    assert want.abs().max() > 1e-3  # the second-order term is not trivially zero here
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------- torch.func
def test_torch_func_grad_vmap_jacrev_run_the_reference(monkeypatch):
    """torch.func transforms: backend='auto' runs the reference's torch ops."""
    monkeypatch.delenv("FASTFVAE_BACKEND", raising=False)
    logits = torch.randn(5, 2, dtype=F64)
    got = torch.func.grad(fastfvae.tc_loss)(logits)
    want = torch.func.grad(reference.tc_loss)(logits)
    torch.testing.assert_close(got, want)

    batch = torch.randn(4, 6, 2, dtype=F64)
    torch.testing.assert_close(torch.func.vmap(fastfvae.tc_loss)(batch), torch.stack([reference.tc_loss(b) for b in batch]))

    mu, logvar, eps = (torch.randn(3, 2, dtype=F64) for _ in range(3))
    jac = torch.func.jacrev(lambda m: fastfvae.reparameterize_kl(m, logvar, eps=eps, reduction="none")[1])(mu)
    want_jac = torch.func.jacrev(lambda m: reference.gaussian_kl(m, logvar, "none"))(mu)
    torch.testing.assert_close(jac, want_jac)

    z = torch.randn(3, 6, 4)
    out = torch.func.vmap(fastfvae.permute_dims, randomness="different")(z)
    assert torch.equal(out.sort(dim=1).values, z.sort(dim=1).values)  # each column permuted


def test_torch_func_with_an_explicit_kernel_backend_says_what_is_supported():
    with pytest.raises(ValueError, match=r"torch.func transforms .* reference backend only; got backend='native'"):
        torch.func.grad(lambda x: fastfvae.tc_loss(x, backend="native"))(torch.randn(5, 2))


# ---------------------------------------------------------------------------- in-place edits
def test_in_place_edit_of_permute_dims_output(backend):
    """permute_dims(z).mul_(2) on a grad-requiring z is allowed, as for any torch op (14.14)."""
    require(backend, "permute_dims", "cpu", torch.float32)
    z = torch.randn(6, 3, requires_grad=True)
    torch.manual_seed(1)
    out = fastfvae.permute_dims(z, backend=backend)
    out.mul_(2).sum().backward()
    torch.testing.assert_close(z.grad, torch.full_like(z, 2.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_in_place_edit_of_log_qz_marginals_outputs(backend, dtype):
    """float32 log_qz_marginals outputs can be edited in place, like the 16-bit ones (14.14)."""
    require(backend, "log_qz", "cpu", dtype)
    z, mu, logvar = (torch.randn(4, 3, dtype=dtype, requires_grad=True) for _ in range(3))
    log_qz, log_qzj = fastfvae.log_qz_marginals(z, mu, logvar, dataset_size=10, backend=backend)
    log_qz.add_(1.0)
    log_qzj.mul_(2.0)
    (log_qz.sum() + log_qzj.sum()).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_autograd_messages_name_the_op():
    """When torch refuses something (an in-place edit of a saved output), the node names the op."""
    mu = torch.randn(4, 3, requires_grad=True)
    kl = fastfvae.reparameterize_kl(mu, mu)[1]
    assert "ReparameterizeKl" in type(kl.grad_fn).__name__


def test_in_place_edit_of_reparameterize_kl_sample(backend):
    """z[:, 0] = 0 after reparameterize_kl is allowed (14.14): the op saves eps or its seed, not z."""
    require(backend, "reparameterize_kl", "cpu", torch.float32)
    mu, logvar = torch.randn(5, 3, requires_grad=True), torch.randn(5, 3, requires_grad=True)
    z, kl = fastfvae.reparameterize_kl(mu, logvar, backend=backend)
    z[:, 0] = 0
    (z.sum() + kl).backward()
    torch.testing.assert_close(mu.grad[:, 0], (mu / 5)[:, 0].detach())  # only the KL gradient is left in column 0
    assert torch.isfinite(logvar.grad).all()
