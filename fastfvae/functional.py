"""The public ops: validation, dispatch and autograd (DESIGN.md §2, §4, §6).

Each op has two equivalent autograd paths over the same backend launchers
(fastfvae/backends/__init__.py documents them):

- eager: a ``torch.autograd.Function`` (a few microseconds per call on the CPU);
- under ``torch.compile``: a ``torch.library`` custom op ``fastfvae::<op>`` with a fake
  (meta) implementation and ``register_autograd``, so the losses trace without graph breaks.

Random ops draw their seed from torch's generator on the input's device
(``torch.randint`` into an int64 (1,) tensor), so ``torch.manual_seed`` governs them and
nothing synchronises the host; the kernels read the seed from device memory.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from fastfvae import reference
from fastfvae._checks import check_choice, check_float_tensor, check_like, check_logits
from fastfvae.backends import get_backend, select

_SEED_HIGH = 2**62


def _draw_seed(device: torch.device) -> Tensor:
    """An int64 (1,) seed from torch's generator for ``device``."""
    return torch.randint(_SEED_HIGH, (1,), dtype=torch.int64, device=device)


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _needs_graph(*tensors) -> bool:
    """Whether autograd must record the op: skipping autograd.Function when nothing requires a
    gradient (evaluation, the discriminator step's permute) saves ~5 us per call on the CPU."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# =============================================================================================
# reparameterize_kl
# =============================================================================================
class _ReparameterizeKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, logvar, eps, seed, reduction, impl):
        z, kl = impl.reparameterize_kl_forward(mu, logvar, eps, seed, reduction)
        # eps (None when drawn) and the seed, not z: the backward needs std*eps exactly, and
        # regenerates a drawn eps from the seed (z - mu loses it to z's rounding).
        ctx.save_for_backward(mu, logvar, eps, seed)
        ctx.reduction, ctx.impl = reduction, impl
        return z, kl

    @staticmethod
    @once_differentiable  # the backward kernels are not themselves differentiable
    def backward(ctx, grad_z, grad_kl):
        mu, logvar, eps, seed = ctx.saved_tensors
        grad_mu, grad_logvar, grad_eps = ctx.impl.reparameterize_kl_backward(
            grad_z, grad_kl, mu, logvar, eps, seed, ctx.reduction, ctx.needs_input_grad[2],
        )
        return grad_mu, grad_logvar, grad_eps, None, None, None


@torch.library.custom_op("fastfvae::reparameterize_kl", mutates_args=())
def _reparameterize_kl_op(
    mu: Tensor, logvar: Tensor, eps: Optional[Tensor], seed: Tensor, reduction: str, backend: str
) -> tuple[Tensor, Tensor]:
    return get_backend(backend).reparameterize_kl_forward(mu, logvar, eps, seed, reduction)


@_reparameterize_kl_op.register_fake
def _(mu, logvar, eps, seed, reduction, backend):
    kl_shape = (mu.shape[0],) if reduction == "none" else ()
    return torch.empty_like(mu), mu.new_empty(kl_shape)


@torch.library.custom_op("fastfvae::reparameterize_kl_backward", mutates_args=())
def _reparameterize_kl_backward_op(
    grad_z: Tensor, grad_kl: Tensor, mu: Tensor, logvar: Tensor, seed: Tensor, reduction: str,
    backend: str, eps: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    # eps last, with a default: Inductor's generated call drops a None in the middle of the
    # positional arguments (seen with torch 2.13: "Expected Tensor for seed, found str").
    return get_backend(backend).reparameterize_kl_backward(
        grad_z, grad_kl, mu, logvar, eps, seed, reduction, True
    )


@_reparameterize_kl_backward_op.register_fake
def _(grad_z, grad_kl, mu, logvar, seed, reduction, backend, eps=None):
    return torch.empty_like(mu), torch.empty_like(mu), torch.empty_like(mu)


def _reparameterize_kl_setup(ctx, inputs, output):
    mu, logvar, eps, seed, reduction, backend = inputs
    ctx.save_for_backward(mu, logvar, eps, seed)  # as _ReparameterizeKL: eps (or None) and seed, not z
    ctx.reduction, ctx.backend, ctx.has_eps = reduction, backend, eps is not None


def _reparameterize_kl_grad(ctx, grad_z, grad_kl):
    mu, logvar, eps, seed = ctx.saved_tensors
    grad_mu, grad_logvar, grad_eps = _reparameterize_kl_backward_op(
        grad_z, grad_kl, mu, logvar, seed, ctx.reduction, ctx.backend, eps
    )
    return grad_mu, grad_logvar, (grad_eps if ctx.has_eps else None), None, None, None


_reparameterize_kl_op.register_autograd(_reparameterize_kl_grad, setup_context=_reparameterize_kl_setup)


def reparameterize_kl(
    mu: Tensor, logvar: Tensor, *, eps: Optional[Tensor] = None, reduction: str = "mean",
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Fused reparameterised sample and Gaussian KL to N(0, I).

    mu, logvar: (B, D) floating, same dtype and device. eps: optional (B, D) noise; when None
    it is drawn inside the kernel from torch's generator (Philox, DESIGN.md §5).
    Returns z = mu + exp(logvar/2) * eps, shape (B, D), and
    kl = reduce_i 0.5 * sum_d (mu^2 + exp(logvar) - logvar - 1): () for "mean"/"sum", (B,) for "none".
    Differentiable in mu, logvar (and eps when given).
    """
    check_float_tensor("mu", mu, (2,))
    check_float_tensor("logvar", logvar, (2,))
    check_like("logvar", logvar, "mu", mu)
    if eps is not None:
        check_float_tensor("eps", eps, (2,))
        check_like("eps", eps, "mu", mu)
    check_choice("reduction", reduction, reference.REDUCTIONS)
    impl = select("reparameterize_kl", backend, mu.device, mu.dtype)
    seed = _draw_seed(mu.device)
    if _compiling():
        return _reparameterize_kl_op(mu, logvar, eps, seed, reduction, impl.NAME)
    if not _needs_graph(mu, logvar, eps):
        return impl.reparameterize_kl_forward(mu, logvar, eps, seed, reduction)
    return _ReparameterizeKL.apply(mu, logvar, eps, seed, reduction, impl)


# =============================================================================================
# permute_dims
# =============================================================================================
def _as_groups(t: Tensor) -> Tensor:
    return t if t.dim() == 3 else t.unsqueeze(0)


class _PermuteDims(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, seed, impl):
        out, index = impl.permute_dims_forward(_as_groups(z), seed, ctx.needs_input_grad[0])
        ctx.save_for_backward(index)
        ctx.impl = impl
        return out.view(z.shape)

    @staticmethod
    @once_differentiable  # the backward kernels are not themselves differentiable
    def backward(ctx, grad_out):
        (index,) = ctx.saved_tensors
        grad_z = ctx.impl.permute_dims_backward(_as_groups(grad_out), index)
        return grad_z.view(grad_out.shape), None, None


@torch.library.custom_op("fastfvae::permute_dims", mutates_args=())
def _permute_dims_op(z: Tensor, seed: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    """z: (G, B, D) -> (out (G, B, D), index int32 (G, B, D))."""
    out, index = get_backend(backend).permute_dims_forward(z, seed, True)
    return out, index


@_permute_dims_op.register_fake
def _(z, seed, backend):
    return torch.empty_like(z), torch.empty_like(z, dtype=torch.int32)


@torch.library.custom_op("fastfvae::permute_dims_backward", mutates_args=())
def _permute_dims_backward_op(grad_out: Tensor, index: Tensor, backend: str) -> Tensor:
    return get_backend(backend).permute_dims_backward(grad_out, index)


@_permute_dims_backward_op.register_fake
def _(grad_out, index, backend):
    return torch.empty_like(grad_out)


def _permute_dims_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.backend = inputs[2]
    ctx.mark_non_differentiable(output[1])


def _permute_dims_grad(ctx, grad_out, grad_index):
    (index,) = ctx.saved_tensors
    return _permute_dims_backward_op(grad_out, index, ctx.backend), None, None


_permute_dims_op.register_autograd(_permute_dims_grad, setup_context=_permute_dims_setup)


def permute_dims(z: Tensor, *, backend: str = "auto") -> Tensor:
    """Paper, Algorithm 1: every column gets its own uniform random permutation of the rows.

    z: (B, D), or (G, B, D) for G independent groups permuted in one launch.
    Returns a tensor of z's shape with out[..., i, d] = z[..., pi_{g,d}(i), d], the permutations
    drawn from torch's generator. Differentiable: the gradient is scattered back through pi.
    """
    check_float_tensor("z", z, (2, 3))
    impl = select("permute_dims", backend, z.device, z.dtype)
    seed = _draw_seed(z.device)
    if _compiling():
        out, _ = _permute_dims_op(_as_groups(z), seed, impl.NAME)
        return out.view(z.shape)
    if not _needs_graph(z):
        return impl.permute_dims_forward(_as_groups(z), seed, False)[0].view(z.shape)
    return _PermuteDims.apply(z, seed, impl)


# =============================================================================================
# tc_loss
# =============================================================================================
def _as_columns(logits: Tensor) -> Tensor:
    """(B,) -> (B, 1); (B, K) unchanged."""
    return logits if logits.dim() == 2 else logits.unsqueeze(1)


class _TCLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, impl):
        ctx.save_for_backward(logits)
        ctx.impl = impl
        return impl.tc_loss_forward(_as_columns(logits))

    @staticmethod
    @once_differentiable  # the backward kernels are not themselves differentiable
    def backward(ctx, grad_tc):
        (logits,) = ctx.saved_tensors
        return ctx.impl.tc_loss_backward(grad_tc, _as_columns(logits)).view(logits.shape), None


@torch.library.custom_op("fastfvae::tc_loss", mutates_args=())
def _tc_loss_op(logits: Tensor, backend: str) -> Tensor:
    return get_backend(backend).tc_loss_forward(logits)


@_tc_loss_op.register_fake
def _(logits, backend):
    return logits.new_empty(())


@torch.library.custom_op("fastfvae::tc_loss_backward", mutates_args=())
def _tc_loss_backward_op(grad_tc: Tensor, logits: Tensor, backend: str) -> Tensor:
    return get_backend(backend).tc_loss_backward(grad_tc, logits)


@_tc_loss_backward_op.register_fake
def _(grad_tc, logits, backend):
    return torch.empty_like(logits)


def _tc_loss_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.backend = inputs[1]


def _tc_loss_grad(ctx, grad_tc):
    (logits,) = ctx.saved_tensors
    return _tc_loss_backward_op(grad_tc, logits, ctx.backend), None


_tc_loss_op.register_autograd(_tc_loss_grad, setup_context=_tc_loss_setup)


def tc_loss(d_logits: Tensor, *, backend: str = "auto") -> Tensor:
    """The VAE's total-correlation estimate from discriminator logits on z ~ q(z).

    d_logits: (B, 2) -> mean_i (l_i0 - l_i1), the density-ratio trick with class 0 = "from
    q(z)"; (B,) or (B, 1) -> mean_i l_i, the logit of "from q(z)". Returns a scalar.
    """
    check_logits("d_logits", d_logits)
    impl = select("tc_loss", backend, d_logits.device, d_logits.dtype)
    if _compiling():
        return _tc_loss_op(_as_columns(d_logits), impl.NAME)
    if not _needs_graph(d_logits):
        return impl.tc_loss_forward(_as_columns(d_logits))
    return _TCLoss.apply(d_logits, impl)


# =============================================================================================
# discriminator_loss
# =============================================================================================
class _DiscriminatorLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, d_real, d_perm, impl):
        ctx.save_for_backward(d_real, d_perm)
        ctx.impl = impl
        return impl.discriminator_loss_forward(_as_columns(d_real), _as_columns(d_perm))

    @staticmethod
    @once_differentiable  # the backward kernels are not themselves differentiable
    def backward(ctx, grad_loss):
        d_real, d_perm = ctx.saved_tensors
        grad_real, grad_perm = ctx.impl.discriminator_loss_backward(
            grad_loss, _as_columns(d_real), _as_columns(d_perm)
        )
        return grad_real.view(d_real.shape), grad_perm.view(d_perm.shape), None


@torch.library.custom_op("fastfvae::discriminator_loss", mutates_args=())
def _discriminator_loss_op(d_real: Tensor, d_perm: Tensor, backend: str) -> Tensor:
    return get_backend(backend).discriminator_loss_forward(d_real, d_perm)


@_discriminator_loss_op.register_fake
def _(d_real, d_perm, backend):
    return d_real.new_empty(())


@torch.library.custom_op("fastfvae::discriminator_loss_backward", mutates_args=())
def _discriminator_loss_backward_op(
    grad_loss: Tensor, d_real: Tensor, d_perm: Tensor, backend: str
) -> tuple[Tensor, Tensor]:
    return get_backend(backend).discriminator_loss_backward(grad_loss, d_real, d_perm)


@_discriminator_loss_backward_op.register_fake
def _(grad_loss, d_real, d_perm, backend):
    return torch.empty_like(d_real), torch.empty_like(d_perm)


def _discriminator_loss_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.backend = inputs[2]


def _discriminator_loss_grad(ctx, grad_loss):
    d_real, d_perm = ctx.saved_tensors
    grad_real, grad_perm = _discriminator_loss_backward_op(grad_loss, d_real, d_perm, ctx.backend)
    return grad_real, grad_perm, None


_discriminator_loss_op.register_autograd(_discriminator_loss_grad, setup_context=_discriminator_loss_setup)


def discriminator_loss(d_real: Tensor, d_perm: Tensor, *, backend: str = "auto") -> Tensor:
    """The discriminator's loss on logits of z ~ q(z) (d_real) and of permute_dims(z') (d_perm).

    Both (B, 2): 0.5 * (CE(d_real, class 0) + CE(d_perm, class 1)), CE averaged over the batch.
    Both (B,) or (B, 1) (the logit of "from q(z)"):
    0.5 * (BCE(sigmoid(d_real), 1) + BCE(sigmoid(d_perm), 0)). Returns a scalar.
    """
    check_logits("d_real", d_real)
    check_logits("d_perm", d_perm)
    check_like("d_perm", d_perm, "d_real", d_real)
    impl = select("discriminator_loss", backend, d_real.device, d_real.dtype)
    if _compiling():
        return _discriminator_loss_op(_as_columns(d_real), _as_columns(d_perm), impl.NAME)
    if not _needs_graph(d_real, d_perm):
        return impl.discriminator_loss_forward(_as_columns(d_real), _as_columns(d_perm))
    return _DiscriminatorLoss.apply(d_real, d_perm, impl)


def discriminator_accuracy(d_real: Tensor, d_perm: Tensor) -> Tensor:
    """Fraction of the 2B samples classified right (float32 scalar, no gradient)."""
    check_logits("d_real", d_real)
    check_logits("d_perm", d_perm)
    check_like("d_perm", d_perm, "d_real", d_real)
    with torch.no_grad():
        return reference.discriminator_accuracy(d_real, d_perm)


# =============================================================================================
# log_qz: log q(z) and log q(z_d) of the aggregate posterior, as beta-TCVAE estimates them
# (reference.py derives the weights; the kernels never materialise the (M, K, D) tensor)
# =============================================================================================
class _LogQz(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, mu, logvar, dataset_size, method, impl):
        log_qz_joint, log_qzj = impl.log_qz_forward(z, mu, logvar, dataset_size, method)
        ctx.save_for_backward(z, mu, logvar, log_qz_joint, log_qzj)
        ctx.dataset_size, ctx.method, ctx.impl = dataset_size, method, impl
        return log_qz_joint, log_qzj

    @staticmethod
    @once_differentiable  # the backward kernels are not themselves differentiable
    def backward(ctx, grad_log_qz, grad_log_qzj):
        z, mu, logvar, log_qz_joint, log_qzj = ctx.saved_tensors
        grad_z, grad_mu, grad_logvar = ctx.impl.log_qz_backward(
            grad_log_qz, grad_log_qzj, z, mu, logvar, log_qz_joint, log_qzj, ctx.dataset_size, ctx.method
        )
        return grad_z, grad_mu, grad_logvar, None, None, None


def _log_qz_compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("fastfvae::log_qz", mutates_args=())
def _log_qz_op(
    z: Tensor, mu: Tensor, logvar: Tensor, dataset_size: int, method: str, backend: str
) -> tuple[Tensor, Tensor]:
    """(log_qz (M,), log_qzj (M, D)) in the compute dtype."""
    return get_backend(backend).log_qz_forward(z, mu, logvar, dataset_size, method)


@_log_qz_op.register_fake
def _(z, mu, logvar, dataset_size, method, backend):
    acc = _log_qz_compute_dtype(z.dtype)
    return z.new_empty((z.shape[0],), dtype=acc), z.new_empty(z.shape, dtype=acc)


@torch.library.custom_op("fastfvae::log_qz_backward", mutates_args=())
def _log_qz_backward_op(
    grad_log_qz: Tensor, grad_log_qzj: Tensor, z: Tensor, mu: Tensor, logvar: Tensor,
    log_qz: Tensor, log_qzj: Tensor, dataset_size: int, method: str, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    return get_backend(backend).log_qz_backward(
        grad_log_qz, grad_log_qzj, z, mu, logvar, log_qz, log_qzj, dataset_size, method
    )


@_log_qz_backward_op.register_fake
def _(grad_log_qz, grad_log_qzj, z, mu, logvar, log_qz, log_qzj, dataset_size, method, backend):
    return torch.empty_like(z), torch.empty_like(mu), torch.empty_like(logvar)


def _log_qz_setup(ctx, inputs, output):
    z, mu, logvar, dataset_size, method, backend = inputs
    ctx.save_for_backward(z, mu, logvar, output[0], output[1])
    ctx.dataset_size, ctx.method, ctx.backend = dataset_size, method, backend


def _log_qz_grad(ctx, grad_log_qz, grad_log_qzj):
    z, mu, logvar, log_qz_joint, log_qzj = ctx.saved_tensors
    if grad_log_qz is None:
        grad_log_qz = torch.zeros_like(log_qz_joint)
    if grad_log_qzj is None:
        grad_log_qzj = torch.zeros_like(log_qzj)
    grad_z, grad_mu, grad_logvar = _log_qz_backward_op(
        grad_log_qz, grad_log_qzj, z, mu, logvar, log_qz_joint, log_qzj, ctx.dataset_size, ctx.method,
        ctx.backend,
    )
    return grad_z, grad_mu, grad_logvar, None, None, None


_log_qz_op.register_autograd(_log_qz_grad, setup_context=_log_qz_setup)


def _check_log_qz_args(z, mu, logvar, dataset_size, method) -> None:
    check_float_tensor("z", z, (2,))
    check_float_tensor("mu", mu, (2,))
    check_float_tensor("logvar", logvar, (2,))
    check_like("logvar", logvar, "mu", mu)
    if z.shape[1] != mu.shape[1]:
        raise ValueError(f"z: expected (M, D) with mu's D = {mu.shape[1]}, got shape {tuple(z.shape)}")
    if z.device != mu.device:
        raise ValueError(f"z: expected a tensor on mu's device {mu.device}, got {z.device}")
    if z.dtype != mu.dtype:
        raise TypeError(f"z: expected mu's dtype {mu.dtype}, got {z.dtype}")
    if isinstance(dataset_size, bool) or not isinstance(dataset_size, int) or dataset_size < 1:
        raise ValueError(f"dataset_size: expected an int >= 1, got {dataset_size!r}")
    check_choice("method", method, reference.LOG_QZ_METHODS)
    if method == "mss":
        queries, components = z.shape[0], mu.shape[0]
        if components < 2:
            raise ValueError(f"mu: method='mss' needs K >= 2 mixture components, got shape {tuple(mu.shape)}")
        if queries > components:
            raise ValueError(
                f"z: method='mss' needs M <= K (query i was drawn from component i), got M = {queries} "
                f"queries for K = {components} components"
            )
        if dataset_size < components:
            raise ValueError(
                f"dataset_size: method='mss' needs dataset_size >= K = {components} (the minibatch is drawn "
                f"from the data set), got {dataset_size}"
            )


def log_qz_marginals(
    z: Tensor, mu: Tensor, logvar: Tensor, *, dataset_size: int, method: str = "mws", backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """Estimates of log q(z_i) (M,) and of every log q(z_i,d) (M, D); ``log_qz`` documents them.

    Both in z's dtype (computed in float32, float64 for float64). Differentiable in z, mu, logvar.
    """
    _check_log_qz_args(z, mu, logvar, dataset_size, method)
    impl = select("log_qz", backend, z.device, z.dtype)
    if _compiling():
        log_qz_joint, log_qzj = _log_qz_op(z, mu, logvar, dataset_size, method, impl.NAME)
    else:
        log_qz_joint, log_qzj = _LogQz.apply(z, mu, logvar, dataset_size, method, impl)
    return log_qz_joint.to(z.dtype), log_qzj.to(z.dtype)


def log_qz(
    z: Tensor, mu: Tensor, logvar: Tensor, *, dataset_size: int, method: str = "mws", backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """beta-TCVAE's estimates of log q(z) and log prod_d q(z_d) of the aggregate posterior.

    z: (M, D) queries; mu, logvar: (K, D) Gaussian posteriors q(z|x_j) of K inputs (in training
    the minibatch itself: z = the batch's samples, M = K = B, z[i] drawn from q(z|x_i)), from a
    data set of dataset_size = N inputs. With m[i, j, d] = log N(z[i, d]; mu[j, d], exp(logvar[j, d])):
        log_qz[i]       = logsumexp_j (sum_d m[i, j, d] + w[i, j])
        log_prod_qzj[i] = sum_d logsumexp_j (m[i, j, d] + w[i, j])
    method "mws" (minibatch weighted sampling): w[i, j] = -log(N K).
    method "mss" (minibatch stratified sampling, unbiased for q(z_i)): w[i, i] = -log N (query i's
        own component), w[i, (i+1) % K] = log((N - K + 1) / (N (K - 1))), other j: -log(K - 1);
        needs K >= 2, M <= K and N >= K (reference.py derives the weights).
    Returns (log_qz (M,), log_prod_qzj (M,)) in z's dtype, differentiable in z, mu and logvar.
    Memory O((M + K) D): the kernels stream over j with an online logsumexp.
    """
    log_qz_joint, log_qzj = log_qz_marginals(
        z, mu, logvar, dataset_size=dataset_size, method=method, backend=backend
    )
    return log_qz_joint, log_qzj.sum(dim=1)
