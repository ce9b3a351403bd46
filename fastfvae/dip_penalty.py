"""DIP-VAE's covariance penalty (Kumar et al. 2018, eqs. 6 and 7), as disentanglement_lib
computes it (methods/unsupervised/vae.py: compute_covariance_z_mean, regularize_diag_off_diag_dip):
``dip_covariance`` and ``dip_regulariser`` in plain torch ops, and ``dip_penalty``, the two as one
autograd node with the gradient in closed form (what ``fastfvae.losses.DIPVAELoss`` runs; on the
CPU its forward is one call of the CPU library, kernels/cpu/dip_penalty.cpp). The public names are
also ``fastfvae.losses``'.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fastfvae._checks import check_choice, check_float_tensor
from fastfvae.backends.native import host_helpers
from fastfvae.ops._register import without_storage

DIP_VARIANTS = ("i", "ii")


def dip_covariance(mu: Tensor, logvar: Tensor, variant: str) -> Tensor:
    """The (D, D) covariance that DIP-VAE drives towards the identity.

    mu, logvar: (B, D) the encoder's posterior, one dtype; B >= 2.
    "i":  C = Cov_batch[mu] = (1/B) sum_b (mu_b - mean(mu)) (mu_b - mean(mu))^T   (population, /B)
    "ii": C = Cov_batch[mu] + diag(mean_b exp(logvar_b))    (the covariance of z under q(z))
    disentanglement_lib computes Cov[mu] as E[mu mu^T] - E[mu] E[mu]^T; the centred form here is
    the same quantity without that form's cancellation when the mean is large.
    """
    centred = mu - mu.mean(dim=0, keepdim=True)
    cov = centred.T @ centred / mu.shape[0]
    if variant == "ii":
        cov = cov + torch.diag(torch.exp(logvar).mean(dim=0))
    return cov


def dip_regulariser(cov: Tensor, lambda_od: float, lambda_d: float) -> Tensor:
    """lambda_od * sum_{i != j} C_ij^2 + lambda_d * sum_i (C_ii - 1)^2 for a (D, D) C: zero at
    the identity (disentanglement_lib's regularize_diag_off_diag_dip)."""
    diagonal = torch.diagonal(cov)
    off_diagonal = cov - torch.diag(diagonal)
    return lambda_od * off_diagonal.pow(2).sum() + lambda_d * (diagonal - 1).pow(2).sum()


# Rows per chunk of the fused penalty's shifted and centred copies: 256 K elements (1 MB of
# float32, half of it per thread with two), so that each chunk of mu - shift stays in cache
# between its subtraction and its matrix product. One thread, 65536 x 64, forward: 2^18 was
# 13.2 ms (median) against 14.4 at 2^20 and 15.4 at 2^22 (one unchunked pass).
_DIP_CHUNK_ELEMENTS = 1 << 18


def _centred_chunks(mu: Tensor, shift: Tensor):
    """(row slice, mu[rows] - shift) over mu's rows in cache-sized chunks."""
    rows = max(1, _DIP_CHUNK_ELEMENTS // mu.shape[1])
    if rows >= mu.shape[0]:
        yield slice(None), mu - shift
        return
    for start in range(0, mu.shape[0], rows):
        yield slice(start, start + rows), mu[start:start + rows] - shift


def _shifted_covariance(mu: Tensor) -> tuple[Tensor, Tensor]:
    """(Cov_batch[mu] (D, D), mean (D,)) in one pass over mu: the Gram matrix of mu - s and the
    sums of mu - s chunk by chunk, then Cov = Gram / B - o o^T with o = mean - s. The shift s is
    mu's first row, a code of the same batch, so o is about one spread in size and the
    subtraction loses a few bits at most, where disentanglement_lib's E[mu mu^T] - E[mu] E[mu]^T
    loses the codes' whole magnitude; and no separate pass computes the mean first."""
    batch, shift = mu.shape[0], mu[0]
    gram = total = None
    for _, shifted in _centred_chunks(mu, shift):
        if gram is None:
            gram, total = torch.mm(shifted.T, shifted), shifted.sum(dim=0)
        else:
            gram.addmm_(shifted.T, shifted)
            total.add_(shifted.sum(dim=0))
    # Gram / B - (total / B)(total / B)^T, and mean = s + total / B: one op each.
    cov = gram.addr_(total, total, beta=1.0 / batch, alpha=-1.0 / (batch * batch))
    return cov, torch.add(shift, total, alpha=1.0 / batch)


def _native_forward_applies(mu: Tensor, logvar: Tensor) -> bool:
    """The CPU library's one-pass forward runs: CPU float32/float64 tensors with storage (not
    functorch wrappers), eager (not traced by torch.compile), and the library exports it."""
    global _NATIVE
    if mu.device.type != "cpu" or mu.dtype not in (torch.float32, torch.float64):
        return False
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active() or without_storage((mu, logvar)):
        return False
    if _NATIVE is None:
        _NATIVE = host_helpers.dip_penalty_available() is None
    return _NATIVE


_NATIVE = None  # whether the CPU library exports ffv_dip_penalty_forward (looked up once); tests set False


def _torch_forward(mu: Tensor, logvar: Tensor, variant: str, lambda_od: float, lambda_d: float):
    """(penalty (), mean (D,), A = Cov + diag(v) - I (D, D), exp(logvar) or None) in torch ops."""
    cov, mean = _shifted_covariance(mu)
    distance, diagonal = cov, cov.diagonal()  # A = C - I, in place: the backward needs only A
    variance = torch.exp(logvar) if variant == "ii" else None
    if variance is not None:
        diagonal.add_(variance.mean(dim=0))
    diagonal.sub_(1)
    flat = distance.view(-1)
    # lambda_od * sum_{i != j} A_ij^2 + lambda_d * sum_i A_ii^2 = lambda_od * |A|^2 +
    # (lambda_d - lambda_od) * |diag A|^2, whose second term vanishes at equal weights (DIP-II's)
    penalty = torch.dot(flat, flat).mul_(lambda_od)
    if lambda_d != lambda_od:
        penalty.add_(torch.dot(diagonal, diagonal), alpha=lambda_d - lambda_od)
    return penalty, mean, distance, variance


class _DIPPenalty(torch.autograd.Function):
    """dip_regulariser(dip_covariance(mu, logvar, variant), lambda_od, lambda_d) as one autograd
    node, with its gradient in closed form. With A = C - I and G = dP/dC = 2 lambda_od offdiag(A)
    + 2 lambda_d diag(A) (symmetric): dP/dmu = 2 (mu - mean) G / B (the mean's own term vanishes:
    the centred rows sum to zero) and, for "ii", dP/dlogvar = exp(logvar) diag(G) / B.

    Why not the composed ops: eager autograd records ~15 nodes for them, and the centred copy of
    mu is a full (B, D) write and read. On the CPU the forward is one pass of the CPU library
    (``host_helpers.dip_penalty_forward``: mu - shift formed once into a cache-sized buffer, the
    Gram matrix's upper triangle, the sums of exp(logvar), the (D, D) arithmetic and the penalty); elsewhere
    (``_torch_forward``) mu - shift is formed chunk by chunk (cache-sized) and fed to the matrix
    product (``_shifted_covariance``: the mean comes from the same pass). The backward forms
    mu - mean chunk by chunk likewise, so nothing of size (B, D) is saved but exp(logvar) ("ii":
    the backward reuses it instead of a second exp pass)."""

    @staticmethod
    def forward(ctx, mu: Tensor, logvar: Tensor, variant: str, lambda_od: float, lambda_d: float) -> Tensor:
        if _native_forward_applies(mu, logvar):
            # One pass over mu and logvar in the CPU library; exp(logvar) kept only when its
            # gradient will be asked for.
            keep_variance = variant == "ii" and ctx.needs_input_grad[1]
            distance, mean, penalty, variance = host_helpers.dip_penalty_forward(
                mu, logvar if variant == "ii" else None, lambda_od, lambda_d, keep_variance)
        else:
            penalty, mean, distance, variance = _torch_forward(mu, logvar, variant, lambda_od, lambda_d)
        ctx.save_for_backward(mu, mean, distance, variance)
        ctx.weights = (lambda_od, lambda_d)
        return penalty

    @staticmethod
    def backward(ctx, grad_penalty: Tensor):
        mu, mean, distance, variance = ctx.saved_tensors
        lambda_od, lambda_d = ctx.weights
        grad_cov = distance * (2.0 * lambda_od)  # G, then G * grad / B
        grad_cov.diagonal().copy_(distance.diagonal()).mul_(2.0 * lambda_d)
        grad_cov.mul_(grad_penalty / mu.shape[0])
        grad_mu = grad_logvar = None
        if ctx.needs_input_grad[0]:
            grad_mu = torch.empty_like(mu)
            twice = grad_cov * 2
            for rows, centred in _centred_chunks(mu, mean):
                torch.mm(centred, twice, out=grad_mu[rows])
        if variance is not None and ctx.needs_input_grad[1]:
            grad_logvar = variance * grad_cov.diagonal()
        return grad_mu, grad_logvar, None, None, None


def dip_penalty(mu: Tensor, logvar: Tensor, variant: str, lambda_od: float, lambda_d: float) -> Tensor:
    """DIP-VAE's penalty, dip_regulariser(dip_covariance(mu, logvar, variant), lambda_od, lambda_d),
    as one autograd node (_DIPPenalty: the same centred covariance, its gradient in closed form).

    mu, logvar: (B, D) floating, one device, B >= 2; computed in their promoted dtype, float32 for
    16-bit codes. Returns a () tensor in that dtype. Differentiable once in mu and logvar.
    """
    check_float_tensor("mu", mu, (2,))
    check_float_tensor("logvar", logvar, (2,))
    check_choice("variant", variant, DIP_VARIANTS)
    if logvar.shape != mu.shape or logvar.device != mu.device:
        raise ValueError(f"logvar: expected mu's shape {tuple(mu.shape)} and device {mu.device}, "
                         f"got {tuple(logvar.shape)} on {logvar.device}")
    dtype = torch.promote_types(torch.promote_types(mu.dtype, logvar.dtype), torch.float32)
    mu, logvar = mu.to(dtype), logvar.to(dtype)
    if mu.shape[0] < 2:
        raise ValueError(f"mu: expected a batch of B >= 2 rows (a batch covariance), got shape {tuple(mu.shape)}")
    return _DIPPenalty.apply(mu, logvar, variant, float(lambda_od), float(lambda_d))
