"""Drop-in loss modules for FactorVAE training loops (DESIGN.md §2).

A 1Konny-style loop switches by replacing its reparametrize + kl_divergence with
``fastfvae.reparameterize_kl``, its TC term with ``FactorVAELoss`` and its two cross-entropies
with ``DiscriminatorLoss`` (README.md shows the two loops side by side).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastfvae import ops
from fastfvae._checks import check_choice, check_float_tensor, check_positive_int, check_real, integer_value
from fastfvae.reference import gaussian_log_density

RECONSTRUCTIONS = ("bernoulli", "gaussian")


def _reduction_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype the loss modules reduce in: the promoted input dtype, at least float32.
    16-bit inputs are reduced in float32 and their loss terms returned in float32, as the ops
    and autocast's float32 list do (DESIGN.md §2): a float16 sum over a batch of images
    overflows (65504), and a bfloat16 one keeps 8 bits."""
    dtype = torch.float32
    for d in dtypes:
        dtype = torch.promote_types(dtype, d)
    return dtype


def _in_reduction_dtype(*tensors: Tensor) -> tuple:
    """The tensors converted to ``_reduction_dtype`` of theirs (a no-op for float32/float64)."""
    dtype = _reduction_dtype(*(t.dtype for t in tensors))
    return tuple(t if t.dtype == dtype else t.to(dtype) for t in tensors)


def _check_same_batch(name: str, value: Tensor, x_recon: Tensor) -> None:
    """``value`` (B, ...) belongs to the batch of ``x_recon`` (B, ...)."""
    if isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] != x_recon.shape[0]:
        raise ValueError(
            f"{name}: expected the batch size of x_recon B = {x_recon.shape[0]}, got shape {tuple(value.shape)}"
        )


class FactorVAELossOutput(NamedTuple):
    total: Tensor  # recon + kl + gamma * tc, the VAE's loss to minimise
    recon: Tensor
    kl: Tensor
    tc: Tensor


def reconstruction_loss(x_recon: Tensor, x: Tensor, distribution: str = "bernoulli") -> Tensor:
    """Negative log-likelihood summed over pixels, averaged over the batch; computed and returned
    in float32 for 16-bit x_recon (its own dtype for float32/float64).

    bernoulli: x_recon are logits, BCE-with-logits against x in [0, 1].
    gaussian: x_recon is the mean (unit variance, constants dropped): sum of squared errors.
    x_recon, x: (B, ...) of one shape.
    """
    check_float_tensor("x_recon", x_recon, (2, 3, 4, 5))
    check_choice("distribution", distribution, RECONSTRUCTIONS)
    if not isinstance(x, Tensor) or x.shape != x_recon.shape:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x: expected the shape of x_recon {tuple(x_recon.shape)}, got {got}")
    if distribution == "bernoulli" and x.device.type == "cpu" and x.numel() and not torch.compiler.is_compiling():
        # Bernoulli targets must lie in [0, 1] (x * 255 drives the loss to -1e7). Checked only
        # where it is free: eager CPU tensors. On a GPU it would cost a host sync per step, under
        # torch.compile a graph break; the trainer checks its data set once at load instead.
        low, high = torch.aminmax(x.detach())
        if low < 0 or high > 1:
            raise ValueError(f"x: Bernoulli targets must lie in [0, 1], got values in [{float(low)}, {float(high)}]")
    (x_recon,) = _in_reduction_dtype(x_recon)  # 16-bit: float32 sums (DESIGN.md §2)
    x = x.to(x_recon.dtype)
    if distribution == "bernoulli":
        total = F.binary_cross_entropy_with_logits(x_recon, x, reduction="sum")
    else:
        total = F.mse_loss(x_recon, x, reduction="sum")
    return total / x_recon.shape[0]


class FactorVAELoss(nn.Module):
    """The VAE's FactorVAE objective: recon + kl + gamma * tc.

    forward(x_recon, x, kl, d_z):
        x_recon, x: decoder output and data of one shape (B, ...), rank 2 to 5: (B, C, H, W)
            images, (B, F) vectors, ...; summed over all but B (see ``reconstruction_loss``);
        kl: the KL returned by ``fastfvae.reparameterize_kl`` (reduction "mean");
        d_z: discriminator logits on the sampled z, (B, 2) or (B,)/(B, 1), NOT detached: the
             TC gradient must reach the encoder.
    Returns FactorVAELossOutput(total, recon, kl, tc).
    """

    def __init__(self, gamma: float = 35.0, reconstruction: str = "bernoulli", backend: str = "auto"):
        super().__init__()
        check_choice("reconstruction", reconstruction, RECONSTRUCTIONS)
        self.gamma = check_real("gamma", gamma)
        self.reconstruction = reconstruction
        self.backend = backend

    def forward(self, x_recon: Tensor, x: Tensor, kl: Tensor, d_z: Tensor) -> FactorVAELossOutput:
        if not isinstance(kl, Tensor) or kl.dim() != 0:
            got = tuple(kl.shape) if isinstance(kl, Tensor) else type(kl).__name__
            raise ValueError(f"kl: expected a scalar tensor (reparameterize_kl with reduction='mean'), got {got}")
        recon = reconstruction_loss(x_recon, x, self.reconstruction)
        _check_same_batch("d_z", d_z, x_recon)
        tc = ops.tc_loss(d_z, backend=self.backend)
        (kl,) = _in_reduction_dtype(kl)
        return FactorVAELossOutput(recon + kl + self.gamma * tc, recon, kl, tc)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, reconstruction={self.reconstruction!r}, backend={self.backend!r}"


class DiscriminatorLoss(nn.Module):
    """The discriminator's loss: forward(d_real, d_perm) -> scalar.

    d_real: logits of D on z.detach() of one batch; d_perm: logits of D on
    permute_dims(z').detach() of a second batch. Both (B, 2) (CE, class 0 = "from q(z)")
    or both (B,)/(B, 1) (BCE, the logit of "from q(z)").
    """

    def __init__(self, backend: str = "auto"):
        super().__init__()
        self.backend = backend

    def forward(self, d_real: Tensor, d_perm: Tensor) -> Tensor:
        return ops.discriminator_loss(d_real, d_perm, backend=self.backend)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"


# =============================================================================================
# beta-TCVAE (Chen et al. 2018) and beta-VAE (Higgins et al. 2017), for comparisons on the same
# data and metric (fastfvae train --objective betatcvae | betavae)
# =============================================================================================
class BetaTCVAELossOutput(NamedTuple):
    total: Tensor  # recon + alpha * mi + beta * tc + gamma * dwkl, the loss to minimise
    recon: Tensor
    mi: Tensor  # index-code mutual information: mean_i (log q(z_i|x_i) - log q(z_i))
    tc: Tensor  # total correlation: mean_i (log q(z_i) - sum_d log q(z_id))
    dwkl: Tensor  # dimension-wise KL: mean_i (sum_d log q(z_id) - log p(z_i))


class BetaTCVAELoss(nn.Module):
    """beta-TCVAE's objective: recon + alpha * MI + beta * TC + gamma * dimension-wise KL.

    The three terms split the batch's KL estimate, mi + tc + dwkl = mean_i (log q(z_i|x_i) -
    log p(z_i)); log q(z) and log q(z_d) are estimated on the minibatch by ``fastfvae.log_qz``
    ("mws" or "mss", see there) from a data set of ``dataset_size`` inputs, without a B x B x D
    tensor.

    forward(x_recon, x, z, mu, logvar):
        x_recon, x: decoder output and data (see ``reconstruction_loss``);
        z: (B, D) the reparameterised sample (e.g. from ``fastfvae.reparameterize_kl``), NOT detached;
        mu, logvar: (B, D) the encoder's posterior. Float tensors are promoted to one dtype.
    Returns BetaTCVAELossOutput(total, recon, mi, tc, dwkl).

    method defaults to "mws" because Chen et al.'s experiments and code use it (their ``--mss``
    is opt-in) and disentanglement_lib trains with it, so results compare with published ones.
    MWS is biased where the batch's posteriors overlap: an untrained model reports mi ~ log N,
    tc ~ (D - 1) log N (41.6 at B = 64, N = 4096, D = 6) and dwkl ~ -D log N (their sum, the
    KL estimate, is unaffected); where the posteriors all overlap these offsets are constants,
    so they shift the loss, not its gradient. Read them as a training signal; "mss" (~0 there)
    or ``fastfvae.diagnostics.decompose_kl`` give values to report.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 6.0, gamma: float = 1.0, *, dataset_size: int,
                 method: str = "mws", reconstruction: str = "bernoulli", backend: str = "auto"):
        super().__init__()
        check_choice("reconstruction", reconstruction, RECONSTRUCTIONS)
        check_choice("method", method, ("mws", "mss"))
        self.alpha, self.beta, self.gamma = check_real("alpha", alpha), check_real("beta", beta), check_real("gamma", gamma)
        self.dataset_size = check_positive_int("dataset_size", dataset_size)  # numpy ints too
        self.method = method
        self.reconstruction = reconstruction
        self.backend = backend

    def forward(self, x_recon: Tensor, x: Tensor, z: Tensor, mu: Tensor, logvar: Tensor) -> BetaTCVAELossOutput:
        for name, value in (("z", z), ("mu", mu), ("logvar", logvar)):
            check_float_tensor(name, value, (2,))
        # 16-bit codes: every term in float32 (log_qz computes in float32 for 16-bit inputs
        # anyway; the upcast is exact), as the ops reduce (DESIGN.md §2).
        z, mu, logvar = _in_reduction_dtype(z, mu, logvar)
        if z.shape != mu.shape:
            raise ValueError(f"z: expected the shape of mu {tuple(mu.shape)}, got {tuple(z.shape)}")
        recon = reconstruction_loss(x_recon, x, self.reconstruction)
        _check_same_batch("z", z, x_recon)
        log_qz, log_prod_qzj = ops.log_qz(
            z, mu, logvar, dataset_size=self.dataset_size, method=self.method, backend=self.backend
        )
        log_q_z_given_x = gaussian_log_density(z, mu, logvar).sum(dim=1)
        zero = z.new_zeros(())  # p(z) = N(0, I): mean 0, log-variance 0
        log_pz = gaussian_log_density(z, zero, zero).sum(dim=1)
        mi = (log_q_z_given_x - log_qz).mean()
        tc = (log_qz - log_prod_qzj).mean()
        dwkl = (log_prod_qzj - log_pz).mean()
        total = recon + self.alpha * mi + self.beta * tc + self.gamma * dwkl
        return BetaTCVAELossOutput(total, recon, mi, tc, dwkl)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, dataset_size={self.dataset_size}, "
                f"method={self.method!r}, reconstruction={self.reconstruction!r}, backend={self.backend!r}")


class BetaVAELossOutput(NamedTuple):
    total: Tensor  # recon + beta * kl
    recon: Tensor
    kl: Tensor


class BetaVAELoss(nn.Module):
    """beta-VAE's objective: recon + beta * KL(q(z|x) || p(z)).

    forward(x_recon, x, kl): kl is the scalar KL from ``fastfvae.reparameterize_kl`` (reduction
    "mean"). Returns BetaVAELossOutput(total, recon, kl).
    """

    def __init__(self, beta: float = 4.0, reconstruction: str = "bernoulli"):
        super().__init__()
        check_choice("reconstruction", reconstruction, RECONSTRUCTIONS)
        self.beta = check_real("beta", beta)
        self.reconstruction = reconstruction

    def forward(self, x_recon: Tensor, x: Tensor, kl: Tensor) -> BetaVAELossOutput:
        if not isinstance(kl, Tensor) or kl.dim() != 0:
            got = tuple(kl.shape) if isinstance(kl, Tensor) else type(kl).__name__
            raise ValueError(f"kl: expected a scalar tensor (reparameterize_kl with reduction='mean'), got {got}")
        recon = reconstruction_loss(x_recon, x, self.reconstruction)
        (kl,) = _in_reduction_dtype(kl)
        return BetaVAELossOutput(recon + self.beta * kl, recon, kl)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, reconstruction={self.reconstruction!r}"


# =============================================================================================
# DIP-VAE-I/II (Kumar et al. 2018) and AnnealedVAE (Burgess et al. 2018), as disentanglement_lib
# trains them (methods/unsupervised/vae.py; defaults from config/unsupervised_study_v1/sweep.py)
# =============================================================================================
DIP_VARIANTS = ("i", "ii")
# disentanglement_lib's study fixes lambda_d = lambda_d_factor * lambda_od with lambda_d_factor
# 10 for DIP-VAE-I and 1 for DIP-VAE-II (sweep.py), and sweeps lambda_od in {1, 2, 5, 10, 20, 50}.
DIP_LAMBDA_D_FACTOR = {"i": 10.0, "ii": 1.0}


class DIPVAELossOutput(NamedTuple):
    total: Tensor  # recon + kl + dip, the loss to minimise
    recon: Tensor
    kl: Tensor
    dip: Tensor  # lambda_od * sum_{i != j} C_ij^2 + lambda_d * sum_i (C_ii - 1)^2 (weights included)


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


# Rows per chunk of the fused penalty's centred copies: 64 K elements (256 KB of float32), so that
# each chunk's mu - mean stays in the L2 cache between its subtraction and its matrix product.
_DIP_CHUNK_ELEMENTS = 1 << 16


def _centred_chunks(mu: Tensor, mean: Tensor):
    """(row slice, mu[rows] - mean) over mu's rows in L2-sized chunks."""
    rows = max(1, _DIP_CHUNK_ELEMENTS // mu.shape[1])
    if rows >= mu.shape[0]:
        yield slice(None), mu - mean
        return
    for start in range(0, mu.shape[0], rows):
        yield slice(start, start + rows), mu[start:start + rows] - mean


class _DIPPenalty(torch.autograd.Function):
    """dip_regulariser(dip_covariance(mu, logvar, variant), lambda_od, lambda_d) as one autograd
    node, with its gradient in closed form. With A = C - I and G = dP/dC = 2 lambda_od offdiag(A)
    + 2 lambda_d diag(A) (symmetric): dP/dmu = 2 (mu - mean) G / B (the mean's own term vanishes:
    the centred rows sum to zero) and, for "ii", dP/dlogvar = exp(logvar) diag(G) / B.

    Why not the composed ops: eager autograd records ~15 nodes for them, and the centred copy of
    mu is a full (B, D) write and read. Here mu - mean is formed chunk by chunk (L2-sized) and
    fed to the matrix product, in the forward and again in the backward, so nothing of size
    (B, D) is saved but exp(logvar) ("ii": the backward reuses it instead of a second exp pass),
    and the forward is 12 small ops (per-op dispatch is most of its time at B = 64)."""

    @staticmethod
    def forward(ctx, mu: Tensor, logvar: Tensor, variant: str, lambda_od: float, lambda_d: float) -> Tensor:
        batch = mu.shape[0]
        mean = mu.mean(dim=0)
        cov = None
        for _, centred in _centred_chunks(mu, mean):
            cov = torch.mm(centred.T, centred) if cov is None else cov.addmm_(centred.T, centred)
        cov.div_(batch)
        variance = torch.exp(logvar) if variant == "ii" else None
        if variance is not None:
            cov.diagonal().add_(variance.mean(dim=0))
        distance = cov  # A = C - I, in place: the backward needs only A
        diagonal = distance.diagonal().sub_(1)
        flat = distance.view(-1)
        # lambda_od * sum_{i != j} A_ij^2 + lambda_d * sum_i A_ii^2
        penalty = torch.add(torch.dot(flat, flat).mul_(lambda_od), torch.dot(diagonal, diagonal),
                            alpha=lambda_d - lambda_od)
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


def _check_scalar_kl(kl) -> None:
    if not isinstance(kl, Tensor) or kl.dim() != 0:
        got = tuple(kl.shape) if isinstance(kl, Tensor) else type(kl).__name__
        raise ValueError(f"kl: expected a scalar tensor (reparameterize_kl with reduction='mean'), got {got}")


def _check_weight(name: str, value) -> float:
    """A finite, non-negative loss weight given as a real number (NumPy's and 0-d tensors too)."""
    return check_real(name, value, minimum=0.0)


class DIPVAELoss(nn.Module):
    """DIP-VAE's objective (Kumar et al. 2018, eqs. 6 and 7): recon + kl + dip, with

        dip = lambda_od * sum_{i != j} C_ij^2 + lambda_d * sum_i (C_ii - 1)^2

    and C the batch covariance of ``dip_covariance``: DIP-VAE-I ("i") C = Cov_batch[mu];
    DIP-VAE-II ("ii") C = Cov_batch[mu] + mean_batch(diag(exp(logvar))). Cov_batch divides by B,
    as disentanglement_lib does.

    Defaults: lambda_od = 10 (the middle of disentanglement_lib's sweep {1, 2, 5, 10, 20, 50});
    lambda_d = None means disentanglement_lib's study setting, 10 * lambda_od for "i" and
    lambda_od for "ii" (config/unsupervised_study_v1/sweep.py, lambda_d_factor).

    forward(x_recon, x, kl, mu, logvar):
        x_recon, x: decoder output and data, any (B, ...) shape of rank 2 to 5, one shape (see
            ``reconstruction_loss``);
        kl: the scalar KL from ``fastfvae.reparameterize_kl(mu, logvar)`` (reduction "mean");
        mu, logvar: (B, D) the encoder's posterior, NOT detached, B >= 2; float tensors of
            different dtypes are promoted to one. ``logvar`` enters only DIP-VAE-II but is
            validated for both, so that switching variants changes no call site.
    Returns DIPVAELossOutput(total, recon, kl, dip).

    B = 1 raises ValueError: the covariance of one sample is identically zero, so DIP-VAE-I
    would add a constant with no gradient (the regulariser would silently do nothing).
    """

    def __init__(self, variant: str = "i", lambda_od: float = 10.0, lambda_d: float | None = None,
                 reconstruction: str = "bernoulli"):
        super().__init__()
        check_choice("variant", variant, DIP_VARIANTS)
        check_choice("reconstruction", reconstruction, RECONSTRUCTIONS)
        self.variant = variant
        self.lambda_od = _check_weight("lambda_od", lambda_od)
        if lambda_d is None:
            self.lambda_d = DIP_LAMBDA_D_FACTOR[variant] * self.lambda_od
        else:
            self.lambda_d = _check_weight("lambda_d", lambda_d)
        self.reconstruction = reconstruction

    def forward(self, x_recon: Tensor, x: Tensor, kl: Tensor, mu: Tensor, logvar: Tensor) -> DIPVAELossOutput:
        _check_scalar_kl(kl)
        check_float_tensor("mu", mu, (2,))
        check_float_tensor("logvar", logvar, (2,))
        if logvar.shape != mu.shape:
            raise ValueError(f"logvar: expected the shape of mu {tuple(mu.shape)}, got {tuple(logvar.shape)}")
        if logvar.device != mu.device:
            raise ValueError(f"logvar: expected a tensor on mu's device {mu.device}, got {logvar.device}")
        if mu.shape[0] < 2:
            raise ValueError(f"mu: expected a batch of B >= 2 rows (a batch covariance), got shape {tuple(mu.shape)}")
        if isinstance(x_recon, Tensor) and x_recon.dim() > 0 and x_recon.shape[0] != mu.shape[0]:
            raise ValueError(f"mu: expected x_recon's batch size {x_recon.shape[0]} rows, got shape {tuple(mu.shape)}")
        recon = reconstruction_loss(x_recon, x, self.reconstruction)
        (kl,) = _in_reduction_dtype(kl)
        mu, logvar = _in_reduction_dtype(mu, logvar)  # 16-bit: the covariance in float32
        dip = dip_penalty(mu, logvar, self.variant, self.lambda_od, self.lambda_d)
        return DIPVAELossOutput(recon + kl + dip, recon, kl, dip)

    def extra_repr(self) -> str:
        return (f"variant={self.variant!r}, lambda_od={self.lambda_od}, lambda_d={self.lambda_d}, "
                f"reconstruction={self.reconstruction!r}")


class AnnealedVAELossOutput(NamedTuple):
    total: Tensor  # recon + gamma * |kl - capacity|, the loss to minimise
    recon: Tensor
    kl: Tensor
    capacity: Tensor  # C(step) in nats, a scalar on kl's device in kl's dtype (float32 for 16-bit kl)


def annealed_capacity(step: int, c_max: float, iteration_threshold: int) -> float:
    """C(step) = min(c_max, c_max * step / iteration_threshold): 0 at step 0, c_max from
    step = iteration_threshold on (disentanglement_lib's ``anneal``)."""
    return min(c_max, c_max * step / iteration_threshold)


def _check_step(step):
    """An int >= 0 (a Python int or a NumPy integer; not a bool or a float), or a 0-d real
    tensor (checked for shape and dtype only: reading its value would synchronise the host)."""
    if isinstance(step, Tensor):
        if step.dim() != 0 or step.dtype.is_complex or step.dtype == torch.bool:
            raise TypeError(f"step: expected an int or a 0-d real tensor, got a {step.dtype} tensor "
                            f"of shape {tuple(step.shape)}")
        return step
    number = integer_value(step)  # Python and NumPy integers; not bools or floats
    if number is None:
        raise TypeError(f"step: expected an int (steps taken so far), got {type(step).__name__}")
    step = number
    if step < 0:
        raise ValueError(f"step: expected an int >= 0, got {step}")
    return step


class AnnealedVAELoss(nn.Module):
    """AnnealedVAE's objective (Burgess et al. 2018, eq. 8): recon + gamma * |kl - C(step)|.

    The capacity C grows linearly from 0 to ``c_max`` nats over ``iteration_threshold`` steps
    (``annealed_capacity``). Defaults are disentanglement_lib's study setting (sweep.py):
    gamma = 1000, c_max = 25 (its sweep: {5, 10, 25, 50, 75, 100}), iteration_threshold = 100000.

    forward(x_recon, x, kl, step):
        x_recon, x: decoder output and data (see ``reconstruction_loss``);
        kl: the scalar KL from ``fastfvae.reparameterize_kl`` (reduction "mean");
        step: int >= 0, the number of optimisation steps taken before this one (0 at the first
            step; disentanglement_lib's global step). The module keeps no counter: the caller's
            step, saved in its checkpoint, makes a resumed run continue the same schedule. A 0-d
            integer tensor on the device also works (no host sync; a CUDA graph that increments
            it in place replays the schedule); its value is not checked, below 0 counts as 0.
    Returns AnnealedVAELossOutput(total, recon, kl, capacity).
    """

    def __init__(self, gamma: float = 1000.0, c_max: float = 25.0, iteration_threshold: int = 100000,
                 reconstruction: str = "bernoulli"):
        super().__init__()
        check_choice("reconstruction", reconstruction, RECONSTRUCTIONS)
        self.gamma = _check_weight("gamma", gamma)
        self.c_max = _check_weight("c_max", c_max)
        self.iteration_threshold = check_positive_int("iteration_threshold", iteration_threshold)
        self.reconstruction = reconstruction

    def forward(self, x_recon: Tensor, x: Tensor, kl: Tensor, step: int) -> AnnealedVAELossOutput:
        _check_scalar_kl(kl)
        step = _check_step(step)
        recon = reconstruction_loss(x_recon, x, self.reconstruction)
        (kl,) = _in_reduction_dtype(kl)
        if isinstance(step, Tensor):
            # On the device, so a captured CUDA graph whose step tensor counts up replays the
            # schedule; a negative value counts as 0 (it cannot be checked without a host sync).
            fraction = (step.to(device=kl.device, dtype=torch.float64) / self.iteration_threshold).clamp(0.0, 1.0)
            capacity = (self.c_max * fraction).to(kl.dtype)
        else:
            # torch.full writes the value on the device (no host-to-device copy of a host tensor).
            capacity = torch.full((), annealed_capacity(step, self.c_max, self.iteration_threshold),
                                  dtype=kl.dtype, device=kl.device)
        total = recon + self.gamma * (kl - capacity).abs()
        return AnnealedVAELossOutput(total, recon, kl, capacity)

    def extra_repr(self) -> str:
        return (f"gamma={self.gamma}, c_max={self.c_max}, iteration_threshold={self.iteration_threshold}, "
                f"reconstruction={self.reconstruction!r}")
