"""A thin FactorVAE trainer on the fused ops (Kim & Mnih 2018, Algorithm 2).

One step, batch size B, two batches x1, x2 drawn uniformly from the factor grid:

1. VAE: mu, logvar = enc(x1); z, kl = reparameterize_kl(mu, logvar) (fused); the loss
   recon + kl + gamma * tc_loss(D(z)) is back-propagated into the VAE's parameters ONLY
   (``backward(inputs=vae parameters)``): the discriminator's weights receive nothing from it.
   Adam(1e-4, betas (0.9, 0.999)) steps the VAE.
2. Discriminator: z' ~ q(z|x2) under no_grad, permute_dims(z'); D sees z.detach() (batch 1) and
   the permuted z' (batch 2) in one forward; DiscriminatorLoss; Adam(1e-4, betas (0.5, 0.9))
   steps D only.

This avoids the three bugs of several public loops: no tensor that autograd saved is modified in
place before its backward (the VAE's graph is consumed before any optimiser step touches a
weight it used); the discriminator loss cannot reach the encoder (its inputs are detached); the
optimisers own disjoint parameter sets (checked at construction).

gamma defaults to 35, the value several reimplementations use for dSprites (the paper's
figures sweep gamma in 10..100 and report ~40 as a good dSprites setting).

Objectives: ``factorvae`` (default), ``betatcvae`` and ``betavae`` through
``fastfvae.losses.BetaTCVAELoss`` / ``BetaVAELoss`` (no discriminator for those two).

Outputs in ``out``: ``log.jsonl`` (one JSON object per logged step, eval and TC rows),
``checkpoint.pt`` (atomic: temp file + fsync + os.replace), ``summary.json``,
``reconstructions.png``, ``traversals.png``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import inspect
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from fastfvae import functional
from fastfvae._png import image_grid, write_png
from fastfvae.losses import DiscriminatorLoss, FactorVAELoss
from fastfvae.models import VAE, Discriminator

OBJECTIVES = ("factorvae", "betatcvae", "betavae")
CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "fastfvae-checkpoint-1"
# The default run (``fastfvae train`` with no options) is sized to finish in about five minutes
# on this project's shared 2-core CPU, metrics ("fast" preset) included. Measured 2026-11-28 at
# batch 64 with other jobs on the cores (the CLI then uses one thread, see cli._set_threads):
# 5.8 steps/s, 30 s of metrics, 4 min 50 s in all; on quiet cores with two threads ~10 steps/s.
# 1500 steps reach recon ~180 nats, KL ~43, all 10 dimensions active, FactorVAE metric ~0.6
# (fast preset): position is learnt, shape and orientation are not; the paper trains 3e5 steps
# (a GPU run).
DEFAULT_STEPS = 1500


@dataclasses.dataclass
class TrainConfig:
    steps: int = DEFAULT_STEPS
    objective: str = "factorvae"
    gamma: float = 35.0
    batch_size: int = 64
    z_dim: int = 10
    lr_vae: float = 1e-4
    lr_d: float = 1e-4
    disc_depth: int = 6
    disc_width: int = 1000
    seed: int = 0
    device: str = "auto"
    backend: str = "auto"
    amp: Optional[str] = None          # None or "bf16" (CUDA only)
    compile: bool = False
    data: Optional[str] = None         # official dSprites npz; None = procedural
    out: Optional[str] = None
    resume: bool = False
    checkpoint_every: int = 500
    log_every: int = 10
    eval_every: int = 0                # 0: metrics only at the end
    log_tc_every: int = 0              # 0: never
    metrics: bool = True               # evaluate the metrics at the end
    metrics_preset: str = "auto"       # fastfvae.metrics preset; auto: "fast" on CPU, "default" on GPU
    images: bool = True                # write reconstructions.png and traversals.png
    progress: bool = True
    threads: Optional[int] = None      # torch CPU threads the run used (recorded; set by the CLI)


class TrainingError(RuntimeError):
    """A run that cannot continue (non-finite loss, unreadable checkpoint, bad options)."""


class NonFiniteLossError(TrainingError):
    def __init__(self, step: int, terms: list[str], values: dict, checkpoint: Optional[str]):
        self.step, self.terms = step, terms
        shown = ", ".join(f"{t} = {values[t]}" for t in terms)
        kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written yet"
        super().__init__(f"step {step}: non-finite loss term(s) {shown}; training stopped, {kept}")


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
def save_checkpoint(state: dict, path: str) -> None:
    """Write ``state`` to ``path`` so that ``path`` always holds a complete checkpoint: a temp
    file in the same folder, flushed and fsynced, then os.replace (atomic on POSIX)."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(path: str) -> dict:
    """A checkpoint written by ``save_checkpoint``, checked; clear errors for missing/corrupt files."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.exists(path):
        raise TrainingError(f"checkpoint {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated/garbled files
        raise TrainingError(f"checkpoint {path!r} is corrupt or not a fastfvae checkpoint: {error}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"checkpoint {path!r} is not a fastfvae checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def build_vae_from_checkpoint(state: dict, device="cpu") -> VAE:
    cfg = state["config"]
    vae = VAE(cfg["z_dim"], state.get("channels", 1), backend=cfg.get("backend", "auto"))
    vae.load_state_dict(state["vae"])
    return vae.to(device).eval()


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise TrainingError(f"--device: expected auto, cpu or cuda, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    return torch.device("cpu")


def make_dataset(path: Optional[str]):
    from fastfvae.data import DSprites
    return DSprites(path=path)


def encoder_mean_fn(vae: VAE, device: torch.device, chunk: int = 1024) -> Callable:
    """uint8 images (n, C, 64, 64) -> encoder means (n, z_dim) float32 on ``device``."""
    def encode(images: torch.Tensor) -> torch.Tensor:
        outs = []
        with torch.no_grad():
            for part in images.split(chunk):
                mu, _ = vae.encoder(part.to(device).float())
                outs.append(mu.float())
        return torch.cat(outs) if outs else torch.empty(0, vae.z_dim, device=device)
    return encode


def encoder_gaussian_fn(vae: VAE, device: torch.device, chunk: int = 1024) -> Callable:
    """uint8 images -> (mu, logvar), each (n, z_dim) float32."""
    def encode(images: torch.Tensor):
        mus, logvars = [], []
        with torch.no_grad():
            for part in images.split(chunk):
                mu, logvar = vae.encoder(part.to(device).float())
                mus.append(mu.float())
                logvars.append(logvar.float())
        return torch.cat(mus), torch.cat(logvars)
    return encode


def metrics_preset(preset: str, device: torch.device) -> str:
    """"auto": the metrics' "fast" preset on a CPU (fewer votes, same protocol: ~40 s for the
    paper's encoder on a 2-core CPU), disentanglement_lib's "default" on a GPU."""
    if preset == "auto":
        return "default" if device.type == "cuda" else "fast"
    return preset


def evaluate_metrics(vae: VAE, dataset, device: torch.device, seed: int = 0, preset: str = "auto"):
    """fastfvae.metrics.evaluate on the encoder mean, or None when that module is absent."""
    try:
        from fastfvae import metrics
    except ImportError:
        return None
    kwargs = {"seed": seed}
    if "preset" in inspect.signature(metrics.evaluate).parameters:
        kwargs["preset"] = metrics_preset(preset, device)
    vae.eval()
    try:
        return metrics.evaluate(encoder_mean_fn(vae, device), dataset, **kwargs)
    finally:
        vae.train()


def write_images(vae: VAE, dataset, device: torch.device, out: str, seed: int = 0,
                 n_recon: int = 8, n_values: int = 9, limit: float = 2.5) -> dict:
    """reconstructions.png (inputs over reconstructions) and traversals.png (one row per latent
    dimension: the first image's mean with that dimension set to linspace(-limit, limit))."""
    generator = torch.Generator().manual_seed(seed)
    x = dataset.images(dataset.sample_factors(n_recon, generator)).to(device).float()
    with torch.no_grad():
        mu, _ = vae.encoder(x)
        recon = torch.sigmoid(vae.decoder(mu.float())).float()
    paths = {"reconstructions": os.path.join(out, "reconstructions.png"),
             "traversals": os.path.join(out, "traversals.png")}
    write_png(paths["reconstructions"], image_grid(torch.cat([x, recon]).cpu(), ncol=n_recon))
    write_png(paths["traversals"], image_grid(traversal_images(vae, mu[:1], n_values, limit), ncol=n_values))
    return paths


def traversal_images(vae: VAE, mu: torch.Tensor, n_values: int = 9, limit: float = 2.5) -> torch.Tensor:
    """(z_dim * n_values, C, 64, 64) decoded images in [0, 1]: row d varies dimension d of ``mu`` (1, D)."""
    d = mu.shape[1]
    values = torch.linspace(-limit, limit, n_values, device=mu.device)
    z = mu.float().repeat(d * n_values, 1)
    for dim in range(d):
        z[dim * n_values:(dim + 1) * n_values, dim] = values
    with torch.no_grad():
        return torch.sigmoid(vae.decoder(z)).float().cpu()


def _adam(params: list, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam, fused into one kernel per step where torch supports it (the discriminator's 5M
    parameters make the unfused update a quarter of a CPU step)."""
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, betas=betas)


def _minibatch_tc() -> Callable:
    try:
        from fastfvae.diagnostics import minibatch_tc
    except ImportError:
        raise TrainingError("--log-tc-every needs fastfvae.diagnostics.minibatch_tc, which this "
                            "installation does not provide yet") from None
    return minibatch_tc


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}m{seconds % 60:02d}s"


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    """Owns the models, optimisers, data sampler and RNG; ``run()`` trains to ``config.steps``.

    ``dataset`` overrides the data set built from ``config.data`` (tests pass small ones).
    """

    def __init__(self, config: TrainConfig, dataset=None, log_stream=None):
        self.config = cfg = config
        self.log_stream = log_stream if log_stream is not None else sys.stderr
        if cfg.objective not in OBJECTIVES:
            raise TrainingError(f"--objective: expected one of {OBJECTIVES}, got {cfg.objective!r}")
        for name in ("steps", "batch_size", "z_dim", "checkpoint_every", "log_every"):
            value = getattr(cfg, name)
            if not isinstance(value, int) or value < 1:
                raise TrainingError(f"--{name.replace('_', '-')}: expected a positive integer, got {value!r}")
        if cfg.amp not in (None, "bf16"):
            raise TrainingError(f"--amp: expected bf16, got {cfg.amp!r}")

        # Distributed (torchrun sets WORLD_SIZE/RANK/LOCAL_RANK).
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(cfg.device, local_rank)
        if cfg.amp == "bf16" and self.device.type != "cuda":
            raise TrainingError(f"--amp bf16 needs a CUDA device; this run is on {self.device.type}")
        self.distributed = self.world_size > 1
        if self.distributed and not dist.is_initialized():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

        self.dataset = dataset if dataset is not None else make_dataset(cfg.data)
        self.dataset_size = len(self.dataset)
        channels = getattr(self.dataset, "num_channels", 1)

        # Same initial weights on every rank; then a per-rank stream for eps and permutations.
        torch.manual_seed(cfg.seed)
        # channels_last: oneDNN's convolutions run ~25% faster in it on the CPU (and cuDNN's in bf16).
        self.vae_module = VAE(cfg.z_dim, channels, backend=cfg.backend).to(
            self.device, memory_format=torch.channels_last)
        self.channels = channels
        self.disc_module = None
        if cfg.objective == "factorvae":
            self.disc_module = Discriminator(cfg.z_dim, cfg.disc_depth, cfg.disc_width).to(self.device)
        torch.manual_seed(cfg.seed + 7919 * self.rank)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(cfg.seed + 7919 * self.rank)
        self.data_generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.rank)

        self.vae_params = list(self.vae_module.parameters())
        self.opt_vae = _adam(self.vae_params, cfg.lr_vae, (0.9, 0.999))
        self.opt_d = None
        if self.disc_module is not None:
            self.opt_d = _adam(list(self.disc_module.parameters()), cfg.lr_d, (0.5, 0.9))
            shared = {id(p) for p in self.vae_params} & {id(p) for p in self.disc_module.parameters()}
            if shared:  # never true by construction; a guard against future edits
                raise TrainingError("the VAE and discriminator optimisers share parameters")

        # Forward callables: DDP wrappers when distributed, compiled when asked; the *_module
        # attributes stay the plain modules (state dicts, evaluation, the TC term's D call).
        self.vae = self.vae_module
        self.disc = self.disc_module
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.vae = DDP(self.vae_module, device_ids=ids)
            if self.disc_module is not None:
                self.disc = DDP(self.disc_module, device_ids=ids)
        self.disc_for_tc = self.disc_module
        if cfg.compile:
            self.vae = torch.compile(self.vae)
            if self.disc is not None:
                self.disc = torch.compile(self.disc)
                self.disc_for_tc = torch.compile(self.disc_module)

        self.loss_fn = self._build_loss()
        if cfg.log_tc_every:
            _minibatch_tc()  # fail now, not at the first TC log, when the diagnostics are missing
        self.disc_loss = DiscriminatorLoss(backend=cfg.backend) if self.disc_module is not None else None
        self.terms = self._term_names()
        self.step = 0
        self.out = cfg.out
        self.checkpoint_path = os.path.join(cfg.out, CHECKPOINT_NAME) if cfg.out else None
        self.last_checkpoint_step: Optional[int] = None
        self._pending: list[tuple[int, torch.Tensor]] = []
        self._last: dict = {}
        self._stop_signal: Optional[int] = None

    # -- objective ---------------------------------------------------------------------------
    def _build_loss(self):
        cfg = self.config
        if cfg.objective == "factorvae":
            return FactorVAELoss(gamma=cfg.gamma, reconstruction="bernoulli", backend=cfg.backend)
        from fastfvae import losses
        name = {"betatcvae": "BetaTCVAELoss", "betavae": "BetaVAELoss"}[cfg.objective]
        cls = getattr(losses, name, None)
        if cls is None:
            raise TrainingError(
                f"--objective {cfg.objective} needs fastfvae.losses.{name}, which this installation "
                f"does not provide yet; use --objective factorvae"
            )
        kwargs = {"reconstruction": "bernoulli"}
        if "backend" in inspect.signature(cls).parameters:
            kwargs["backend"] = cfg.backend
        if cfg.objective == "betatcvae":  # Chen et al.'s dSprites setting
            return cls(alpha=1.0, beta=6.0, gamma=1.0, dataset_size=self.dataset_size, method="mws", **kwargs)
        return cls(beta=4.0, **kwargs)  # Higgins et al.'s dSprites setting

    def _term_names(self) -> tuple[str, ...]:
        return {
            "factorvae": ("loss", "recon", "kl", "tc", "d_loss", "d_acc"),
            "betatcvae": ("loss", "recon", "mi", "tc", "dwkl"),
            "betavae": ("loss", "recon", "kl"),
        }[self.config.objective]

    def _autocast(self):
        if self.config.amp == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- one step ----------------------------------------------------------------------------
    def sample_batches(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x1 (and x2 for FactorVAE), float (B, C, 64, 64) on the device, from the data generator."""
        b = self.config.batch_size
        count = 2 * b if self.disc_module is not None else b
        factors = self.dataset.sample_factors(count, self.data_generator)
        # The procedural renderer runs on the factors' device (on a GPU it would otherwise be
        # the bottleneck); a file-backed data set gathers on the CPU and copies.
        x = self.dataset.images(factors.to(self.device)).to(self.device, non_blocking=True).float()
        x = x.contiguous(memory_format=torch.channels_last)
        return (x[:b], x[b:]) if self.disc_module is not None else (x, None)

    def train_step(self, x1: torch.Tensor, x2: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One optimisation step on given batches. Returns the detached terms (``self.terms``
        order) as one float32 tensor on the device (no host synchronisation)."""
        if self.config.objective == "factorvae":
            return self._factorvae_step(x1, x2)
        return self._single_loss_step(x1)

    def _factorvae_step(self, x1, x2):
        b = x1.shape[0]
        # 1. VAE: recon + kl + gamma * tc; D's weights are not among the backward's inputs.
        with self._autocast():
            out = self.vae(x1)
            d_z = self.disc_for_tc(out.z)
        losses = self.loss_fn(out.x_recon.float(), x1, out.kl, d_z.float())
        self.opt_vae.zero_grad(set_to_none=True)
        losses.total.backward(inputs=self.vae_params)
        self.opt_vae.step()
        # 2. Discriminator on z of batch 1 and permute_dims(z') of batch 2, both detached.
        with torch.no_grad(), self._autocast():
            z_prime = self.vae_module.sample_z(x2)
        z_perm = functional.permute_dims(z_prime.float(), backend=self.config.backend)
        z_real = out.z.detach()
        with self._autocast():
            logits = self.disc(torch.cat([z_real, z_perm])).float()
        d_real, d_perm = logits[:b], logits[b:]
        d_loss = self.disc_loss(d_real, d_perm)
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        d_acc = functional.discriminator_accuracy(d_real.detach(), d_perm.detach())
        self._last = {"z": z_real, "z_perm": z_perm, "mu": out.mu.detach().float(),
                      "logvar": out.logvar.detach().float(), "tc": losses.tc.detach()}
        return torch.stack([losses.total.detach(), losses.recon.detach(), losses.kl.detach(),
                            losses.tc.detach(), d_loss.detach(), d_acc.to(d_loss.dtype)]).float()

    def _single_loss_step(self, x1):
        with self._autocast():
            out = self.vae(x1)
        x_recon = out.x_recon.float()
        if self.config.objective == "betatcvae":
            losses = self.loss_fn(x_recon, x1, out.z, out.mu.float(), out.logvar.float())
            values = [losses.total, losses.recon, losses.mi, losses.tc, losses.dwkl]
        else:
            losses = self.loss_fn(x_recon, x1, out.kl)
            values = [losses.total, losses.recon, losses.kl]
        self.opt_vae.zero_grad(set_to_none=True)
        losses.total.backward()
        self.opt_vae.step()
        self._last = {"z": out.z.detach(), "mu": out.mu.detach().float(), "logvar": out.logvar.detach().float()}
        return torch.stack([v.detach().float() for v in values])

    # -- state -------------------------------------------------------------------------------
    def _rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state(), "data": self.data_generator.get_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        self.data_generator.set_state(state["data"])
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def state_dict(self) -> dict:
        rng = self._rng_state()
        if self.distributed:
            gathered: list = [None] * self.world_size
            dist.all_gather_object(gathered, rng)
            rng_per_rank = gathered
        else:
            rng_per_rank = [rng]
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "config": dataclasses.asdict(self.config),
            "channels": self.channels,
            "world_size": self.world_size,
            "vae": self.vae_module.state_dict(),
            "disc": None if self.disc_module is None else self.disc_module.state_dict(),
            "opt_vae": self.opt_vae.state_dict(),
            "opt_d": None if self.opt_d is None else self.opt_d.state_dict(),
            "rng": rng_per_rank,
        }

    def load_state_dict(self, state: dict, source: str = "checkpoint") -> None:
        cfg = state["config"]
        for key in ("objective", "z_dim", "disc_depth", "disc_width"):
            if cfg.get(key) != getattr(self.config, key):
                raise TrainingError(
                    f"{source} was trained with {key}={cfg.get(key)!r}, this run asks for "
                    f"{getattr(self.config, key)!r}; pass the same value to resume"
                )
        self.vae_module.load_state_dict(state["vae"])
        self.opt_vae.load_state_dict(state["opt_vae"])
        if self.disc_module is not None:
            self.disc_module.load_state_dict(state["disc"])
            self.opt_d.load_state_dict(state["opt_d"])
        self.step = int(state["step"])
        rng = state.get("rng") or []
        if len(rng) == self.world_size:
            self._set_rng_state(rng[self.rank])
        else:  # a different number of processes: fresh, still deterministic streams
            self._log(f"note: {source} was written by {len(rng)} process(es), this run has "
                      f"{self.world_size}; random streams restart from the seed and step")
            torch.manual_seed(self.config.seed + 7919 * self.rank + self.step)
            self.data_generator.manual_seed(self.config.seed * 1_000_003 + self.rank + self.step)

    def save(self) -> Optional[str]:
        """Checkpoint (collective when distributed; rank 0 writes)."""
        self._flush_pending()  # never checkpoint weights whose losses were not checked
        state = self.state_dict()
        if self.rank == 0 and self.checkpoint_path:
            save_checkpoint(state, self.checkpoint_path)
            self.last_checkpoint_step = self.step
        return self.checkpoint_path

    # -- logging -----------------------------------------------------------------------------
    def _log(self, message: str) -> None:
        if self.rank == 0 and self.config.progress:
            print(message, file=self.log_stream, flush=True)

    def _write_jsonl(self, row: dict) -> None:
        if self.rank == 0 and self.out:
            with open(os.path.join(self.out, "log.jsonl"), "a") as f:
                f.write(json.dumps(row) + "\n")

    def _flush_pending(self) -> None:
        """Copy the queued per-step terms to the host, stop on the first non-finite one."""
        if not self._pending:
            return
        steps = [s for s, _ in self._pending]
        rows = torch.stack([v for _, v in self._pending]).cpu()
        self._pending.clear()
        finite = torch.isfinite(rows)
        if not bool(finite.all()):
            r = int((~finite.all(dim=1)).nonzero()[0])
            bad = [t for t, ok in zip(self.terms, finite[r].tolist()) if not ok]
            values = dict(zip(self.terms, rows[r].tolist()))
            ckpt = self.checkpoint_path if self.last_checkpoint_step is not None else None
            if ckpt:
                ckpt = f"{ckpt} (step {self.last_checkpoint_step})"
            raise NonFiniteLossError(steps[r], bad, values, ckpt)
        self._latest_values = dict(zip(self.terms, rows[-1].tolist()))
        self._latest_step = steps[-1]

    def _truncate_log(self) -> None:
        """After a resume, drop log rows from steps past the checkpoint (the run died after it)."""
        path = os.path.join(self.out, "log.jsonl")
        if self.rank != 0 or not os.path.exists(path):
            return
        keep = []
        with open(path) as f:
            for line in f:
                try:
                    if json.loads(line).get("step", 0) <= self.step:
                        keep.append(line)
                except json.JSONDecodeError:
                    pass  # a line cut by a crash
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, path)

    # -- the loop ----------------------------------------------------------------------------
    def _prepare_out(self) -> None:
        cfg = self.config
        if not self.out:
            if cfg.resume:
                raise TrainingError("--resume needs --out DIR (the folder of the run to continue)")
            return
        if self.rank == 0:
            os.makedirs(self.out, exist_ok=True)
            for stale in glob.glob(os.path.join(self.out, "*.tmp-*")):
                os.remove(stale)  # leftovers of an interrupted write; the real files are intact
        if cfg.resume:
            state = load_checkpoint(self.checkpoint_path)
            self.load_state_dict(state, source=self.checkpoint_path)
            self.last_checkpoint_step = self.step
            self._truncate_log()
            self._log(f"resumed {self.checkpoint_path} at step {self.step}")
        elif os.path.exists(self.checkpoint_path):
            raise TrainingError(
                f"{self.out} already holds a checkpoint; pass --resume to continue it or choose another --out"
            )
        if self.distributed:
            dist.barrier()

    def _handle_signal(self, signum, frame) -> None:
        if self._stop_signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_signal = signum  # no I/O here: the signal may interrupt a write to the same stream

    def _should_stop(self) -> bool:
        flag = 1 if self._stop_signal is not None else 0
        # Ranks agree through an all-reduce (a host sync), so only every log_every steps.
        if self.distributed and self.step % self.config.log_every == 0:
            t = torch.tensor([flag], device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = int(t.item())
            if flag and self._stop_signal is None:
                self._stop_signal = signal.SIGTERM
        elif self.distributed:
            flag = 0
        if flag:
            self._log(f"\nreceived {signal.Signals(self._stop_signal).name} after step {self.step}: "
                      f"writing a checkpoint")
        return bool(flag)

    def run(self) -> dict:
        """Train to ``config.steps``; returns the summary (also written to summary.json).
        On SIGINT/SIGTERM: checkpoint, summary["interrupted"] = signal name."""
        cfg = self.config
        self._prepare_out()
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                handlers[signum] = signal.signal(signum, self._handle_signal)
        try:
            return self._loop()
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)

    def _loop(self) -> dict:
        cfg = self.config
        start_step = self.step
        check_every = 1 if self.device.type == "cpu" else cfg.log_every
        progress = _Progress(self, start_step)
        self._latest_values, self._latest_step = {}, self.step
        train_time = 0.0
        t_start = time.perf_counter()
        eval_rows = []
        while self.step < cfg.steps:
            if self._should_stop():
                break
            t0 = time.perf_counter()
            x1, x2 = self.sample_batches()
            values = self.train_step(x1, x2)
            self.step += 1
            self._pending.append((self.step, values))
            last = self.step == cfg.steps
            if self.step % check_every == 0 or self.step % cfg.log_every == 0 or last:
                self._flush_pending()
            if self.device.type == "cuda" and (self.step % cfg.log_every == 0 or last):
                torch.cuda.synchronize(self.device)
            train_time += time.perf_counter() - t0
            rate = (self.step - start_step) / max(train_time, 1e-9)
            if self.step % cfg.log_every == 0 or last:
                self._write_jsonl({"step": self.step, **self._latest_values, "steps_per_s": round(rate, 3),
                                   "time_s": round(time.perf_counter() - t_start, 3)})
            if cfg.log_tc_every and self.step % cfg.log_tc_every == 0:
                self._log_tc()
            if cfg.eval_every and self.step % cfg.eval_every == 0 and not last and self.rank == 0:
                metrics = evaluate_metrics(self.vae_module, self.dataset, self.device, cfg.seed,
                                           cfg.metrics_preset)
                eval_rows.append({"step": self.step, "metrics": metrics})
                self._write_jsonl({"step": self.step, "event": "eval", "metrics": metrics})
            if self.step % cfg.checkpoint_every == 0 and not last:
                self.save()
            progress.update(rate)
        self._flush_pending()
        interrupted = self._stop_signal is not None and self.step < cfg.steps
        self.save()
        progress.close()
        rate = (self.step - start_step) / max(train_time, 1e-9)
        summary = {
            "step": self.step,
            "steps": cfg.steps,
            "objective": cfg.objective,
            "final": self._latest_values,
            "train_time_s": round(train_time, 2),
            "steps_per_s": round(rate, 3),
            "device": str(self.device),
            "world_size": self.world_size,
            "checkpoint": self.checkpoint_path,
        }
        if interrupted:
            summary["interrupted"] = signal.Signals(self._stop_signal).name
            self._log(f"stopped at step {self.step} ({summary['interrupted']}); checkpoint {self.checkpoint_path}")
            return summary
        if self.rank == 0:
            summary.update(self._finish(eval_rows))
            summary["wall_time_s"] = round(time.perf_counter() - t_start, 2)
            if self.out:
                with open(os.path.join(self.out, "summary.json.tmp"), "w") as f:
                    json.dump(summary, f, indent=2)
                os.replace(os.path.join(self.out, "summary.json.tmp"), os.path.join(self.out, "summary.json"))
        return summary

    def _finish(self, eval_rows: list) -> dict:
        """End of training on rank 0: KL per dimension, metrics, PNGs."""
        cfg = self.config
        extra: dict[str, Any] = {"config": dataclasses.asdict(cfg)}
        vae = self.vae_module.eval()
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        with torch.no_grad():
            x = self.dataset.images(self.dataset.sample_factors(512, gen)).to(self.device).float()
            mu, logvar = vae.encoder(x)
            kl_dim = 0.5 * (mu.float() ** 2 + logvar.float().exp() - logvar.float() - 1).mean(0)
        extra["kl_per_dim"] = [round(v, 4) for v in kl_dim.tolist()]
        extra["active_dims"] = int((kl_dim > 0.1).sum())
        if cfg.metrics:
            t0 = time.perf_counter()
            self._log("evaluating the disentanglement metrics ...")
            metrics = evaluate_metrics(vae, self.dataset, self.device, cfg.seed, cfg.metrics_preset)
            extra["metrics"] = metrics
            extra["metrics_time_s"] = round(time.perf_counter() - t0, 2)
            if metrics is None:
                extra["metrics_note"] = "fastfvae.metrics is not available in this installation"
            else:
                self._write_jsonl({"step": self.step, "event": "eval", "metrics": metrics})
        if eval_rows:
            extra["evals"] = eval_rows
        if cfg.images and self.out:
            extra["images"] = write_images(vae, self.dataset, self.device, self.out, seed=cfg.seed)
        vae.train()
        return extra

    def _log_tc(self) -> None:
        last = self._last
        tc = _minibatch_tc()(last["z"], last["mu"], last["logvar"], self.dataset_size)
        row = {"step": self.step, "event": "tc", "tc_minibatch": float(tc)}
        if "tc" in last:
            row["tc_discriminator"] = float(last["tc"])
        self._write_jsonl(row)
        self._log(f"step {self.step}: TC minibatch estimate {float(tc):.4f}"
                  + (f", discriminator estimate {row['tc_discriminator']:.4f}" if "tc" in last else ""))


class _Progress:
    """A carriage-return progress line on a TTY, plain lines every 5% otherwise."""

    def __init__(self, trainer: Trainer, start_step: int):
        self.trainer = trainer
        self.stream = trainer.log_stream
        self.enabled = trainer.rank == 0 and trainer.config.progress
        self.tty = self.enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = max(1, trainer.config.steps // 20)
        self.last_draw = 0.0
        self.width = 0

    def line(self, rate: float) -> str:
        t = self.trainer
        v = t._latest_values
        parts = [f"step {t.step}/{t.config.steps}"]
        parts += [f"{k} {v[k]:.4g}" for k in t.terms if k in v]
        eta = (t.config.steps - t.step) / max(rate, 1e-9)
        parts.append(f"{rate:.2f} steps/s, eta {_format_duration(eta)}")
        return " | ".join([parts[0], " ".join(parts[1:-1]), parts[-1]])

    def update(self, rate: float) -> None:
        if not self.enabled:
            return
        t = self.trainer
        if self.tty:
            now = time.perf_counter()
            if now - self.last_draw < 0.2 and t.step != t.config.steps:
                return
            self.last_draw = now
            text = self.line(rate)
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
            self.stream.flush()
        elif t.step % self.every == 0 or t.step == t.config.steps:
            print(self.line(rate), file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def train(config: TrainConfig, dataset=None) -> dict:
    """Build a Trainer and run it (see the module docstring)."""
    return Trainer(config, dataset=dataset).run()
