"""TrainConfig, its validation, and the device it names.

``validate(config)`` checks every option before anything is built or written, so a bad option
fails in a second with a ``TrainingError`` naming it, never after training.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional

import torch

from fastfvae import backends
from fastfvae.metrics import PRESETS
from fastfvae.train.errors import TrainingError
from fastfvae.train.steps import OBJECTIVES, STEPS

BACKEND_CHOICES = ("auto",) + backends.BACKEND_NAMES
PRESET_CHOICES = ("auto",) + tuple(PRESETS)

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
    """Every option of a run; ``fastfvae train --help`` describes each. gamma defaults to 35,
    the value several reimplementations use for dSprites (the paper's figures sweep gamma in
    10..100 and report ~40 as a good dSprites setting)."""

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
    compile: bool = False              # torch.compile the whole step (fastfvae/train/whole_step.py)
    graph: bool = False                # CUDA: capture the whole step in one CUDA graph (unvalidated)
    packed_data: Optional[bool] = None  # data set bit-packed on the device; None: on CUDA only
    data: Optional[str] = None         # the data set's file or folder; dSprites: None = procedural
    dataset: str = "dsprites"          # fastfvae.data.names(); checkpoints without it are dSprites
    scream_image: Optional[str] = None  # scream_dsprites: the painting's image file
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
    # DIP-VAE-I/II and AnnealedVAE (fastfvae.losses.DIPVAELoss / AnnealedVAELoss document the
    # defaults, disentanglement_lib's study setting): lambda_d None = 10 * lambda_od for dipvae1,
    # lambda_od for dipvae2. The anneal reaches c_max after iteration_threshold steps, so a short
    # run needs a smaller threshold than the study's 100,000 (its runs are 300,000 steps).
    lambda_od: float = 10.0
    lambda_d: Optional[float] = None
    beta: float = 4.0                  # beta-VAE's KL weight (Higgins et al.'s dSprites setting)
    anneal_gamma: float = 1000.0
    c_max: float = 25.0
    iteration_threshold: int = 100_000
    # Viewers that mirror log.jsonl: "tensorboard", "wandb" (fastfvae/train/loggers.py).
    loggers: list = dataclasses.field(default_factory=list)


POSITIVE_INTS = ("steps", "batch_size", "z_dim", "disc_depth", "disc_width", "checkpoint_every", "log_every",
                 "iteration_threshold")
NON_NEGATIVE_INTS = ("eval_every", "log_tc_every")
SEED_LIMIT = 2 ** 63  # torch seeds are 64-bit; the per-rank seeds derived from it stay in range
# The discriminator's memory (weights, gradients, two Adam moments in float32) may not exceed
# the machine's memory: refused before allocating, since Linux may grant a huge allocation and
# kill the process when the pages are touched.
DISC_BYTES_PER_PARAMETER = 16
NON_NEGATIVE_FLOATS = ("lambda_od", "anneal_gamma", "c_max", "beta")  # and lambda_d unless None
# The smallest --batch-size (per process) each objective can learn from, and why; the others need 1.
MIN_BATCH = {
    "factorvae": (2, "permute_dims of one row is that row, so the discriminator would compare q(z) with "
                     "itself and its TC estimate would be meaningless"),
    "betatcvae": (2, "its estimate of q(z) from one code makes the TC and MI terms constants, with no "
                     "gradient"),
    "dipvae1": (2, "its penalty is on the covariance of the codes over the batch"),
    "dipvae2": (2, "its penalty is on the covariance of the codes over the batch"),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate(config: TrainConfig) -> None:
    """Raise TrainingError naming the first bad option of ``config``. Reads nothing from disk
    and creates nothing: called before any folder or network exists."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
    if config.objective not in OBJECTIVES:
        raise TrainingError(f"--objective: expected one of {OBJECTIVES}, got {config.objective!r}")
    for name in POSITIVE_INTS:
        value = getattr(config, name)
        if not _is_int(value) or value < 1:
            raise TrainingError(f"{_flag(name)}: expected a positive integer, got {value!r}")
    for name in NON_NEGATIVE_INTS:
        value = getattr(config, name)
        if not _is_int(value) or value < 0:
            raise TrainingError(f"{_flag(name)}: expected a non-negative integer, got {value!r}")
    minimum, why = MIN_BATCH.get(config.objective, (1, ""))
    if config.batch_size < minimum:
        raise TrainingError(f"--batch-size: --objective {config.objective} needs a batch of at least {minimum} "
                            f"images per process ({why}), got {config.batch_size}")
    if not _is_int(config.seed) or not 0 <= config.seed < SEED_LIMIT:
        raise TrainingError(f"--seed: expected an integer in [0, 2**63 - 1], got {config.seed!r}")
    _check_numbers(config)
    if config.amp not in (None, "bf16"):
        raise TrainingError(f"--amp: expected bf16, got {config.amp!r}")
    for name in NON_NEGATIVE_FLOATS + (("lambda_d",) if config.lambda_d is not None else ()):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise TrainingError(f"{_flag(name)}: expected a finite number >= 0, got {value!r}")
    if config.backend not in BACKEND_CHOICES:
        raise TrainingError(f"--backend: expected one of {BACKEND_CHOICES}, got {config.backend!r}")
    if config.metrics_preset not in PRESET_CHOICES:
        raise TrainingError(f"--metrics-preset: expected one of {PRESET_CHOICES}, got {config.metrics_preset!r}")
    if config.out is not None and (not isinstance(config.out, str) or not config.out.strip()):
        raise TrainingError(f"--out: expected a folder path, got {config.out!r}")
    if config.threads is not None and (not _is_int(config.threads) or config.threads < 1):
        raise TrainingError(f"--threads: expected a positive integer, got {config.threads!r}")
    if not isinstance(config.loggers, (list, tuple)):
        raise TrainingError(f"--logger: expected a list of names, got {config.loggers!r}")
    from fastfvae.train import loggers
    loggers.check_names(config.loggers)  # a missing package fails here, before any work
    _check_dataset(config)


def _check_dataset(config: TrainConfig) -> None:
    """--dataset is one of fastfvae.data.names(); --scream-image goes with scream_dsprites only."""
    from fastfvae.data import names
    if config.dataset not in names():
        raise TrainingError(f"--dataset: expected one of {names()}, got {config.dataset!r}")
    if (config.scream_image is not None) != (config.dataset == "scream_dsprites"):
        raise TrainingError(f"--scream-image: needed by scream_dsprites and by it only (--dataset "
                            f"{config.dataset}, --scream-image {config.scream_image!r})")


def _check_numbers(config: TrainConfig) -> None:
    """gamma: finite and >= 0; learning rates: finite and > 0."""
    for name, low_ok in (("gamma", True), ("lr_vae", False), ("lr_d", False)):
        value = getattr(config, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < 0 or (value == 0 and not low_ok):
            bound = ">= 0" if low_ok else "> 0"
            raise TrainingError(f"{_flag(name)}: expected a finite number {bound}, got {value!r}")


def check_device_support(config: TrainConfig, device: torch.device) -> None:
    """What depends on the device: bf16 autocast, the backend serving the step's ops, and the
    discriminator fitting in memory. TrainingError naming the option otherwise."""
    if config.amp == "bf16" and device.type != "cuda":
        raise TrainingError(f"--amp bf16 needs a CUDA device; this run is on {device.type}")
    if config.backend != "auto":
        reasons = {op: backends.reason_not_served(config.backend, op, device, torch.float32)
                   for op in STEPS[config.objective].ops}
        refused = {op: why for op, why in reasons.items() if why}
        if refused:
            details = "; ".join(f"{op}: {why}" for op, why in refused.items())
            raise TrainingError(f"--backend {config.backend} cannot run this run's ops on {device.type}: {details}")
    if config.objective == "factorvae":
        w, depth = config.disc_width, config.disc_depth
        parameters = config.z_dim * w + (depth - 1) * w * w + (depth + 2) * w + 2
        need, have = parameters * DISC_BYTES_PER_PARAMETER, _memory_bytes(device)
        if need > have:
            raise TrainingError(
                f"--disc-width {w} --disc-depth {depth}: the discriminator needs ~{need / 2**30:.1f} GiB "
                f"(weights, gradients, Adam state), more than the {device.type} memory ({have / 2**30:.1f} GiB)"
            )


def _memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" -> cuda when available, else cpu; "cuda" -> this process's GPU (``local_rank``)."""
    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise TrainingError(f"--device: expected auto, cpu or cuda, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    return torch.device("cpu")


def make_dataset(path: Optional[str], dataset: str = "dsprites", scream_image: Optional[str] = None,
                 seed: int = 0):
    """The data set ``--dataset`` names (``fastfvae.data.load``), read from ``--data`` (dSprites:
    the official npz, or the procedural renderer for None). ``seed`` fixes the per-observation
    draws of the sets that make them (every set but dSprites)."""
    from fastfvae.data import load
    options = {} if dataset == "dsprites" else {"seed": seed}
    if dataset == "scream_dsprites":
        options["scream_image"] = scream_image
    return load(dataset, path, **options)


# --resume: options that define WHAT is trained must equal the checkpoint's (refused otherwise);
# every other option is applied from the new command line, logged (a "resume" row in log.jsonl
# and a note on stderr) and recorded (the checkpoint's and summary's config). "out" and "resume"
# name the run rather than configure it.
RESUME_MUST_MATCH = ("objective", "z_dim", "disc_depth", "disc_width", "seed", "data", "dataset", "scream_image")
RESUME_NOT_COMPARED = ("out", "resume")


def resume_changes(saved: dict, config: TrainConfig, source: str) -> dict:
    """{option: [checkpoint's value, this run's value]} for the applied options that changed;
    TrainingError when a RESUME_MUST_MATCH option differs. ``saved``: the checkpoint's config."""
    defaults = dataclasses.asdict(TrainConfig())
    changed = {}
    for name, value in dataclasses.asdict(config).items():
        if name in RESUME_NOT_COMPARED:
            continue
        before = saved.get(name, defaults[name])
        if before == value:
            continue
        if name in RESUME_MUST_MATCH:
            raise TrainingError(
                f"{source} was trained with {name}={before!r}, this run asks for {value!r}; "
                f"{_flag(name)} cannot change on --resume (pass the same value, or start a new run)"
            )
        changed[name] = [before, value]
    return changed
