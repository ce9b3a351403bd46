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
from fastfvae.dip_penalty import DIP_VARIANTS, dip_covariance, dip_penalty, dip_regulariser  # noqa: F401 (public here)
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
# disentanglement_lib's study fixes lambda_d = lambda_d_factor * lambda_od with lambda_d_factor
# 10 for DIP-VAE-I and 1 for DIP-VAE-II (sweep.py), and sweeps lambda_od in {1, 2, 5, 10, 20, 50}.
DIP_LAMBDA_D_FACTOR = {"i": 10.0, "ii": 1.0}


class DIPVAELossOutput(NamedTuple):
    total: Tensor  # recon + kl + dip, the loss to minimise
    recon: Tensor
    kl: Tensor
    dip: Tensor  # lambda_od * sum_{i != j} C_ij^2 + lambda_d * sum_i (C_ii - 1)^2 (weights included)


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
