"""Checkpoint files: atomic writes, checked reads, and the random-number state they carry.

A checkpoint is a dict saved with torch.save:

    format      CHECKPOINT_FORMAT
    step        int, optimisation steps taken
    config      dataclasses.asdict(TrainConfig) of the run that wrote it
    channels    image channels of the VAE
    world_size  processes that trained it
    vae, opt_vae, disc, opt_d   state dicts (disc/opt_d None for objectives without a discriminator)
    rng         one entry per process: {"torch", "data"[, "cuda"]} generator states
"""
from __future__ import annotations

import contextlib
import os

import torch

from fastfvae.models import VAE
from fastfvae.train.errors import DiskFullError, TrainingError, writing

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "fastfvae-checkpoint-1"
REQUIRED_KEYS = ("step", "config", "vae", "opt_vae", "disc", "opt_d", "rng")


def save_checkpoint(state: dict, path: str) -> None:
    """Write ``state`` to ``path`` so that ``path`` always holds a complete checkpoint: a temp
    file in the same folder, flushed and fsynced, then os.replace (atomic on POSIX)."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with writing(path), open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except DiskFullError as error:
        kept = (f"{path} still holds the previous checkpoint (step {_step_of(path)}); free some space and "
                f"continue with --resume") if os.path.exists(path) else "no checkpoint was written"
        raise DiskFullError(path, error.reason, kept) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _step_of(path: str):
    """The step a checkpoint file holds, or "unknown" (read only when a write failed)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except Exception:  # any unreadable file: the message says so
        return "unknown"


def load_checkpoint(path: str) -> dict:
    """A checkpoint written by ``save_checkpoint`` (``path``: the file or its run folder), checked;
    TrainingError for a missing, corrupt or foreign file."""
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
    missing = [key for key in REQUIRED_KEYS if key not in state]
    config = state.get("config")
    if not missing and not (isinstance(config, dict) and isinstance(config.get("z_dim"), int)):
        missing = ["config.z_dim"]
    if missing:
        raise TrainingError(f"checkpoint {path!r} is incomplete: it lacks {', '.join(missing)} "
                            f"(written by another program, or damaged)")
    return state


def build_vae_from_checkpoint(state: dict, device="cpu") -> VAE:
    """The checkpoint's VAE in eval mode on ``device``."""
    cfg = state["config"]
    try:
        vae = VAE(cfg["z_dim"], state.get("channels", 1), backend=cfg.get("backend", "auto"))
        vae.load_state_dict(state["vae"])
    except (RuntimeError, ValueError, TypeError) as error:
        raise TrainingError(f"the checkpoint's VAE weights do not fit its config: {error}") from None
    return vae.to(device).eval()


def rng_state(device: torch.device, data_generator: torch.Generator) -> dict:
    """This process's generator states: torch's CPU one, the data sampler's and, on CUDA, the device's."""
    state = {"torch": torch.get_rng_state(), "data": data_generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device, data_generator: torch.Generator) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    data_generator.set_state(state["data"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
