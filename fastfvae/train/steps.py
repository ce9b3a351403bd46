"""One class per objective: one optimisation step on given batches, testable without the loop.

A step owns the networks and optimisers its objective adds to the VAE, its loss module, the names
of the terms it reports, and the checkpoint entries of those networks and optimisers. The loop
(fastfvae/train/trainer.py) only samples batches, calls the step and records what it returns.

Adding an objective: a ``Step`` subclass here, one line in ``STEPS``, its options in
``TrainConfig`` (fastfvae/train/config.py) and in ``fastfvae train`` (fastfvae/cli.py).

FactorVAE (Kim & Mnih 2018, Algorithm 2), one step on batches x1, x2 of B images:

1. VAE: mu, logvar = enc(x1); z, kl = reparameterize_kl(mu, logvar) (fused); the loss
   recon + kl + gamma * tc_loss(D(z)) is back-propagated into the VAE's parameters ONLY
   (``backward(inputs=vae parameters)``): the discriminator's weights receive nothing from it.
   Adam(lr_vae, betas (0.9, 0.999)) steps the VAE.
2. Discriminator: z' ~ q(z|x2) under no_grad (the encoder as step 1 left it), permute_dims(z');
   DiscriminatorLoss on D(z.detach()) (batch 1) and D(z'_perm) (batch 2); Adam(lr_d, betas
   (0.5, 0.9)) steps D only. D(z.detach()) is D(z) of step 1, value for value: step 1 changed
   only the VAE's weights. So with the plain module (one process) D runs on z'_perm alone and
   the real half's logits and activations are step 1's. By default (gamma != 0, no autocast;
   eager or the whole-step --compile) the real half's backward is step 1's too
   (``SharedDiscriminatorBackward``: its layer gradients are the VAE backward's, scaled), and
   each D layer's weight gradient is one GEMM over both halves. Otherwise (gamma 0, autocast)
   the VAE backward keeps D's part of the graph (``retain_graph``) and the discriminator's
   backward takes ``inputs=`` D's parameters, so it never enters z or the encoder; under DDP or
   per-module torch.compile D runs once on the concatenated 2B rows instead. Same maths on
   every path.

This avoids the three bugs of several public loops: no tensor that autograd saved is modified in
place before a backward that reads it (the only graph part used twice is D's, and only
opt_vae.step runs in between); the discriminator loss cannot reach the encoder (its inputs are
detached, or its backward stops at D's parameters); the optimisers own disjoint parameter sets
(checked at construction).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from fastfvae import losses
from fastfvae.ops import discriminator_accuracy, permute_dims
from fastfvae.models import VAE, Discriminator
from fastfvae.train.errors import TrainingError
from fastfvae.train.shared_backward import SharedDiscriminatorBackward


def _f32(t: Tensor) -> Tensor:
    """A network output for the losses: bf16 (autocast) as float32, float32/float64 as it is."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def adam(params: list, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam, fused into one kernel per step where torch supports it (the discriminator's 5M
    parameters make the unfused update a quarter of a CPU step)."""
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, betas=betas)


@dataclasses.dataclass
class Forwards:
    """How a step calls its networks: DDP (``ddp``, when distributed) and/or torch.compile.

    ``training(module)`` is the forward whose gradients are averaged over processes;
    ``plain(module)`` is compiled only (a forward whose gradients are not that module's update,
    e.g. the discriminator inside the VAE's TC term)."""

    ddp: Optional[Callable[[nn.Module], nn.Module]] = None
    compile: bool = False

    def training(self, module: nn.Module) -> Callable:
        wrapped = self.ddp(module) if self.ddp is not None else module
        return torch.compile(wrapped) if self.compile else wrapped

    def plain(self, module: nn.Module) -> Callable:
        return torch.compile(module) if self.compile else module


class Step:
    """Base class. ``step(x1, x2)`` runs one update and returns the detached terms, in ``terms``
    order, as one float32 tensor (len(terms),) on the device: no host synchronisation.

    config: a TrainConfig (lr_vae, backend, amp and the objective's own options are read);
    vae: the VAE (already on its device); dataset_size: images in the data set (some estimators
    need it). ``last`` keeps the latest step's detached z, mu, logvar (B, D) for diagnostics.
    """

    name = ""
    terms: tuple[str, ...] = ()
    batches = 1  # batches of config.batch_size images drawn per step
    ops: tuple[str, ...] = ("reparameterize_kl",)  # fused ops it calls (checked against --backend)

    def __init__(self, config, vae: VAE, dataset_size: int):
        self.config = config
        self.vae_module = vae
        self.vae: Callable = vae  # the training forward (DDP / compiled after ``wrap``)
        self.vae_params = list(vae.parameters())
        self.dataset_size = dataset_size
        self.opt_vae = adam(self.vae_params, config.lr_vae, (0.9, 0.999))
        self.last: dict = {}

    def wrap(self, forwards: Forwards) -> None:
        """Route the training forwards through DDP / torch.compile."""
        self.vae = forwards.training(self.vae_module)

    def autocast(self):
        if self.config.amp == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __call__(self, x1: Tensor, x2: Optional[Tensor] = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    # -- checkpoint entries (the keys are the checkpoint format's, see checkpoint.py) ---------
    def state_dict(self) -> dict:
        return {"vae": self.vae_module.state_dict(), "opt_vae": self.opt_vae.state_dict(),
                "disc": None, "opt_d": None}

    def load_state_dict(self, state: dict) -> None:
        self.vae_module.load_state_dict(state["vae"])
        self.opt_vae.load_state_dict(state["opt_vae"])

    def set_learning_rates(self, config) -> None:
        """Apply config's learning rates to the optimisers (a resumed run may change them)."""
        for group in self.opt_vae.param_groups:
            group["lr"] = config.lr_vae


class FactorVAEStep(Step):
    """FactorVAE: recon + kl + gamma * TC, TC from a discriminator trained alongside (module docstring)."""

    name = "factorvae"
    terms = ("loss", "recon", "kl", "tc", "d_loss", "d_acc")
    batches = 2
    ops = ("reparameterize_kl", "permute_dims", "tc_loss", "discriminator_loss")

    def __init__(self, config, vae: VAE, dataset_size: int):
        super().__init__(config, vae, dataset_size)
        device = next(vae.parameters()).device
        self.disc_module = Discriminator(config.z_dim, config.disc_depth, config.disc_width).to(device)
        self.disc: Callable = self.disc_module      # D's own update (DDP / compiled)
        self.disc_for_tc: Callable = self.disc_module  # D inside the VAE's loss (compiled only)
        self.disc_params = list(self.disc_module.parameters())
        self.opt_d = adam(self.disc_params, config.lr_d, (0.5, 0.9))
        # D's forward on z inside the VAE loss doubles as the real half of D's update when both
        # are the plain module (not DDP- or compile-wrapped: ``wrap``; the whole-step compile of
        # --compile traces it as it is).
        self._reuse_d_z = True
        self.shared = SharedDiscriminatorBackward(self.disc_module) if (
            config.gamma != 0 and config.amp is None and SharedDiscriminatorBackward.supports(self.disc_module)) else None
        shared = {id(p) for p in self.vae_params} & {id(p) for p in self.disc_module.parameters()}
        if shared:  # never true by construction; a guard against future edits
            raise TrainingError("the VAE and discriminator optimisers share parameters")
        self.loss_fn = losses.FactorVAELoss(gamma=config.gamma, reconstruction="bernoulli",
                                            backend=config.backend)
        self.disc_loss = losses.DiscriminatorLoss(backend=config.backend)

    def wrap(self, forwards: Forwards) -> None:
        super().wrap(forwards)
        self.disc = forwards.training(self.disc_module)
        self.disc_for_tc = forwards.plain(self.disc_module)
        self._reuse_d_z = self.disc is self.disc_module and self.disc_for_tc is self.disc_module

    def __call__(self, x1: Tensor, x2: Optional[Tensor] = None) -> Tensor:
        """x1, x2: float (B, C, 64, 64) images of two independent batches."""
        if x2 is None:
            raise ValueError("x2: FactorVAE needs a second batch for the discriminator, got None")
        # D may have changed since construction (a hook, a parametrization, a new layer): the
        # shared backward is taken only while it is exact for D as it is now.
        if self._reuse_d_z and self.shared is not None and self.shared.exact_for(self.disc_module):
            return self._shared_step(x1, x2)
        b = x1.shape[0]
        reuse = self._reuse_d_z
        # 1. VAE: recon + kl + gamma * tc; D's weights are not among the backward's inputs.
        with self.autocast():
            out = self.vae(x1)
            d_z = self.disc_for_tc(out.z)
        terms = self.loss_fn(_f32(out.x_recon), x1, out.kl, _f32(d_z))
        self.opt_vae.zero_grad(set_to_none=True)
        # reuse: keep D's part of this graph, its forward on z is the real half of step 2.
        terms.total.backward(inputs=self.vae_params, retain_graph=reuse)
        self.opt_vae.step()
        # 2. Discriminator on z of batch 1 and permute_dims(z') of batch 2, both detached.
        z_perm = self._permuted_codes(x2)
        if reuse:
            # D(z.detach()) is d_z: D's weights have not changed since (step 1 updated the VAE
            # only). Its backward below stops at D's parameters (``inputs``), so nothing reaches
            # z or the encoder, and D runs on the permuted batch alone.
            d_real = _f32(d_z)
            with self.autocast():
                d_perm = _f32(self.disc(z_perm))
        else:
            with self.autocast():
                logits = _f32(self.disc(torch.cat([out.z.detach(), z_perm])))
            d_real, d_perm = logits[:b], logits[b:]
        d_loss = self.disc_loss(d_real, d_perm)
        self.opt_d.zero_grad(set_to_none=True)
        if reuse:
            # D's parameters as they are now: a parametrization added since construction (weight
            # norm's g and v) replaces some (the optimiser steps those it was given).
            d_loss.backward(inputs=list(self.disc_module.parameters()))
        else:
            d_loss.backward()
        self.opt_d.step()
        return self._finish(out, terms, z_perm, d_real, d_perm, d_loss)

    def _shared_step(self, x1: Tensor, x2: Tensor) -> Tensor:
        """The same update with D's backward shared (SharedDiscriminatorBackward): one backward
        pass through D per half, the real half's inside the VAE's backward."""
        out = self.vae(x1)
        real = self.shared.run(out.z)
        terms = self.loss_fn(out.x_recon, x1, out.kl, real.logits)
        self.opt_vae.zero_grad(set_to_none=True)
        # The VAE's gradients and those at D's layer outputs on z (computed anyway on the way to
        # z); autograd.grad rather than backward(inputs=): dynamo traces it (--compile).
        grads = torch.autograd.grad(terms.total, self.vae_params + real.outputs)
        for param, grad in zip(self.vae_params, grads):
            param.grad = grad
        real_deltas = grads[len(self.vae_params):]
        self.opt_vae.step()
        z_perm = self._permuted_codes(x2)
        perm = self.shared.run(z_perm)
        d_real = real.logits.detach().requires_grad_()
        d_loss = self.disc_loss(d_real, perm.logits)
        self.opt_d.zero_grad(set_to_none=True)
        self.shared.set_grads(real, real_deltas, perm, d_loss, d_real)
        self.opt_d.step()
        return self._finish(out, terms, z_perm, d_real, perm.logits, d_loss)

    def _permuted_codes(self, x2: Tensor) -> Tensor:
        """permute_dims(z'), z' ~ q(z|x2) under no_grad (the encoder as the VAE update left it)."""
        with torch.no_grad(), self.autocast():
            z_prime = self.vae_module.sample_z(x2)
        return permute_dims(_f32(z_prime), backend=self.config.backend)

    def _finish(self, out, terms, z_perm: Tensor, d_real: Tensor, d_perm: Tensor, d_loss: Tensor) -> Tensor:
        """Keep ``last`` for diagnostics; the terms as one float32 tensor (len(terms),)."""
        d_acc = discriminator_accuracy(d_real.detach(), d_perm.detach())
        self.last = {"z": out.z.detach(), "z_perm": z_perm, "mu": out.mu.detach().float(),
                     "logvar": out.logvar.detach().float(), "tc": terms.tc.detach()}
        return torch.stack([terms.total.detach(), terms.recon.detach(), terms.kl.detach(),
                            terms.tc.detach(), d_loss.detach(), d_acc.to(d_loss.dtype)]).float()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "disc": self.disc_module.state_dict(),
                "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.disc_module.load_state_dict(state["disc"])
        self.opt_d.load_state_dict(state["opt_d"])

    def set_learning_rates(self, config) -> None:
        super().set_learning_rates(config)
        for group in self.opt_d.param_groups:
            group["lr"] = config.lr_d


class _SingleLossStep(Step):
    """Objectives that are one loss on the VAE (no discriminator): subclasses build ``loss_fn``
    and say which of its outputs are the terms."""

    def loss_terms(self, out, x_recon: Tensor, x1: Tensor) -> list[Tensor]:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, x1: Tensor, x2: Optional[Tensor] = None) -> Tensor:
        """x1: float (B, C, 64, 64) images; x2 is not used."""
        with self.autocast():
            out = self.vae(x1)
        values = self.loss_terms(out, _f32(out.x_recon), x1)
        self.opt_vae.zero_grad(set_to_none=True)
        values[0].backward()
        self.opt_vae.step()
        self.last = {"z": out.z.detach(), "mu": out.mu.detach().float(), "logvar": out.logvar.detach().float()}
        return torch.stack([v.detach().float() for v in values])


class BetaTCVAEStep(_SingleLossStep):
    """beta-TCVAE (Chen et al. 2018) with their dSprites setting: alpha 1, beta 6, gamma 1,
    minibatch-weighted sampling."""

    name = "betatcvae"
    terms = ("loss", "recon", "mi", "tc", "dwkl")
    ops = ("reparameterize_kl", "log_qz")

    def __init__(self, config, vae: VAE, dataset_size: int):
        super().__init__(config, vae, dataset_size)
        self.loss_fn = losses.BetaTCVAELoss(alpha=1.0, beta=6.0, gamma=1.0, dataset_size=dataset_size,
                                            method="mws", reconstruction="bernoulli", backend=config.backend)

    def loss_terms(self, out, x_recon, x1):
        t = self.loss_fn(x_recon, x1, out.z, _f32(out.mu), _f32(out.logvar))
        return [t.total, t.recon, t.mi, t.tc, t.dwkl]


class BetaVAEStep(_SingleLossStep):
    """beta-VAE (Higgins et al. 2017): --beta, by default their dSprites setting 4."""

    name = "betavae"
    terms = ("loss", "recon", "kl")

    def __init__(self, config, vae: VAE, dataset_size: int):
        super().__init__(config, vae, dataset_size)
        self.loss_fn = losses.BetaVAELoss(beta=config.beta, reconstruction="bernoulli")

    def loss_terms(self, out, x_recon, x1):
        t = self.loss_fn(x_recon, x1, out.kl)
        return [t.total, t.recon, t.kl]


class _DIPVAEStep(_SingleLossStep):
    """DIP-VAE (Kumar et al. 2018) as disentanglement_lib trains it: recon + kl + the penalty on
    the batch covariance (``losses.DIPVAELoss``), weights --lambda-od / --lambda-d."""

    variant = ""
    terms = ("loss", "recon", "kl", "dip")

    def __init__(self, config, vae: VAE, dataset_size: int):
        super().__init__(config, vae, dataset_size)
        self.loss_fn = losses.DIPVAELoss(self.variant, lambda_od=config.lambda_od, lambda_d=config.lambda_d,
                                         reconstruction="bernoulli")

    def loss_terms(self, out, x_recon, x1):
        t = self.loss_fn(x_recon, x1, out.kl, _f32(out.mu), _f32(out.logvar))
        return [t.total, t.recon, t.kl, t.dip]


class DIPVAE1Step(_DIPVAEStep):
    """DIP-VAE-I: the covariance of the encoder means, Cov_batch[mu]."""

    name = "dipvae1"
    variant = "i"


class DIPVAE2Step(_DIPVAEStep):
    """DIP-VAE-II: the covariance of z under q(z), Cov_batch[mu] + mean_batch diag(exp(logvar))."""

    name = "dipvae2"
    variant = "ii"


class AnnealedVAEStep(_SingleLossStep):
    """AnnealedVAE (Burgess et al. 2018): recon + gamma * |kl - C(step)|, C rising linearly to
    --c-max nats over --iteration-threshold steps (``losses.AnnealedVAELoss``).

    ``steps_taken`` is the loss's step (optimisation steps before this one, disentanglement_lib's
    global step), an int64 tensor on the VAE's device incremented in place after each update, so
    a compiled or CUDA-graph-captured whole step (--compile, --graph) advances the schedule with
    no host sync. It is not a second counter to save: ``load_state_dict`` sets it from the
    checkpoint's ``step``, so a resumed run continues the schedule where it stopped.
    """

    name = "annealedvae"
    terms = ("loss", "recon", "kl", "capacity")

    def __init__(self, config, vae: VAE, dataset_size: int):
        super().__init__(config, vae, dataset_size)
        self.loss_fn = losses.AnnealedVAELoss(gamma=config.anneal_gamma, c_max=config.c_max,
                                              iteration_threshold=config.iteration_threshold,
                                              reconstruction="bernoulli")
        self.steps_taken = torch.zeros((), dtype=torch.int64, device=next(vae.parameters()).device)

    def loss_terms(self, out, x_recon, x1):
        t = self.loss_fn(x_recon, x1, out.kl, self.steps_taken)
        return [t.total, t.recon, t.kl, t.capacity]

    def __call__(self, x1: Tensor, x2: Optional[Tensor] = None) -> Tensor:
        values = super().__call__(x1, x2)
        self.steps_taken.add_(1)
        return values

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.steps_taken.fill_(int(state["step"]))


# --objective name -> its step class (the first is the default).
STEPS: dict[str, type[Step]] = {
    FactorVAEStep.name: FactorVAEStep,
    BetaTCVAEStep.name: BetaTCVAEStep,
    BetaVAEStep.name: BetaVAEStep,
    DIPVAE1Step.name: DIPVAE1Step,
    DIPVAE2Step.name: DIPVAE2Step,
    AnnealedVAEStep.name: AnnealedVAEStep,
}
OBJECTIVES = tuple(STEPS)
