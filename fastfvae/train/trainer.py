"""The Trainer: builds a run from a TrainConfig, resumes it, and runs the loop.

The jobs live next door: options (config.py), the objective's step (steps.py), checkpoints and
RNG state (checkpoint.py), the log and progress line (records.py), images and summary
(artefacts.py), metrics (evaluation.py), processes and signals (processes.py).
"""
from __future__ import annotations

import dataclasses
import glob
import os
import signal
import sys
import time
from typing import Optional

import torch

from fastfvae.diagnostics import minibatch_tc
from fastfvae.models import VAE
from fastfvae.train import artefacts, evaluation
from fastfvae.train.checkpoint import (
    CHECKPOINT_FORMAT, CHECKPOINT_NAME, load_checkpoint, rng_state, save_checkpoint, set_rng_state,
)
from fastfvae.train.config import TrainConfig, make_dataset, resolve_device, validate
from fastfvae.train.errors import TrainingError
from fastfvae.train.processes import Processes, StopSignals
from fastfvae.train.records import JsonlLog, Progress, TermBuffer
from fastfvae.train.steps import STEPS, Forwards
from fastfvae.train.whole_step import WholeStep, device_batches


class Trainer:
    """Owns the models (through the objective's step), data sampler and RNG; ``run()`` trains
    to ``config.steps``. ``dataset`` overrides the data set built from ``config.data``."""

    def __init__(self, config: TrainConfig, dataset=None, log_stream=None):
        validate(config)
        self.config = cfg = config
        self.log_stream = log_stream if log_stream is not None else sys.stderr
        self.processes = procs = Processes()
        self.world_size, self.rank, self.distributed = procs.world_size, procs.rank, procs.distributed
        self.device = resolve_device(cfg.device, procs.local_rank)
        if cfg.amp == "bf16" and self.device.type != "cuda":
            raise TrainingError(f"--amp bf16 needs a CUDA device; this run is on {self.device.type}")
        procs.start(self.device)
        self.dataset = dataset if dataset is not None else make_dataset(cfg.data)
        self.dataset_size = len(self.dataset)
        self.channels = getattr(self.dataset, "num_channels", 1)

        # Same initial weights on every rank; then a per-rank stream for eps and permutations.
        torch.manual_seed(cfg.seed)
        # channels_last: oneDNN's convolutions run ~25% faster in it on the CPU (and cuDNN's in bf16).
        vae = VAE(cfg.z_dim, self.channels, backend=cfg.backend).to(self.device, memory_format=torch.channels_last)
        self.objective = STEPS[cfg.objective](cfg, vae, self.dataset_size)
        torch.manual_seed(cfg.seed + 7919 * self.rank)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(cfg.seed + 7919 * self.rank)
        self.data_generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.rank)
        # --compile compiles the whole step (one graph) in one process; with several processes
        # (DDP forwards) the networks are compiled instead.
        self.objective.wrap(Forwards(ddp=procs.ddp(self.device), compile=cfg.compile and self.distributed))
        self.whole_step = self._whole_step()

        self.terms = self.objective.terms
        self.buffer = TermBuffer(self.terms)
        self.step = 0
        self.out = cfg.out
        self.checkpoint_path = os.path.join(cfg.out, CHECKPOINT_NAME) if cfg.out else None
        self.last_checkpoint_step: Optional[int] = None
        self.log = JsonlLog(cfg.out, self.rank)
        self.stop = StopSignals()

    # -- the networks, through the step (names kept for tests, benchmarks and users) ----------
    vae_module = property(lambda self: self.objective.vae_module)
    disc_module = property(lambda self: getattr(self.objective, "disc_module", None))
    opt_vae = property(lambda self: self.objective.opt_vae)
    opt_d = property(lambda self: getattr(self.objective, "opt_d", None))
    _last = property(lambda self: self.objective.last)

    # -- one step ----------------------------------------------------------------------------
    def _whole_step(self) -> WholeStep:
        """The loop's step: batches (on the device when the data set is packed there) and the
        objective's update, eager, compiled (--compile) or as one CUDA graph (--graph)."""
        cfg = self.config
        if cfg.graph and (self.device.type != "cuda" or self.distributed):
            raise TrainingError(f"--graph needs one process on a CUDA device; this run has "
                                f"{self.world_size} process(es) on {self.device.type}")
        packed = cfg.packed_data if cfg.packed_data is not None else (self.device.type == "cuda" or cfg.graph)
        batches = None
        if packed or cfg.graph:
            batches = device_batches(self.dataset, self.device, cfg.batch_size, self.objective.batches, self._say)
        if cfg.graph and batches is None:
            raise TrainingError("--graph needs a data set that can be bit-packed on the device (see the note above)")
        mode = "graph" if cfg.graph else "compile" if cfg.compile and not self.distributed else "eager"
        return WholeStep(self.objective, batches or self.sample_batches, mode,
                         update=lambda x1, x2: self.train_step(x1, x2))

    def sample_batches(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x1 (and x2 when the objective takes two), float (B, C, 64, 64) on the device."""
        b, count = self.config.batch_size, self.objective.batches
        factors = self.dataset.sample_factors(count * b, self.data_generator)
        # The procedural renderer runs on the factors' device (on a GPU it would otherwise be
        # the bottleneck); a file-backed data set gathers on the CPU and copies.
        x = self.dataset.images(factors.to(self.device)).to(self.device, non_blocking=True).float()
        x = x.contiguous(memory_format=torch.channels_last)
        return (x[:b], x[b:]) if count == 2 else (x, None)

    def train_step(self, x1: torch.Tensor, x2: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One optimisation step on given batches: the detached terms (``self.terms`` order) as
        one float32 tensor on the device (no host synchronisation)."""
        return self.objective(x1, x2)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        rng = self.processes.gather(rng_state(self.device, self.data_generator))
        return {"format": CHECKPOINT_FORMAT, "step": self.step, "config": dataclasses.asdict(self.config),
                "channels": self.channels, "world_size": self.world_size,
                **self.objective.state_dict(), "rng": rng}

    def load_state_dict(self, state: dict, source: str = "checkpoint") -> None:
        cfg = state["config"]
        for key in ("objective", "z_dim", "disc_depth", "disc_width"):
            if cfg.get(key) != getattr(self.config, key):
                raise TrainingError(
                    f"{source} was trained with {key}={cfg.get(key)!r}, this run asks for "
                    f"{getattr(self.config, key)!r}; pass the same value to resume"
                )
        self.objective.load_state_dict(state)
        self.step = int(state["step"])
        rng = state.get("rng") or []
        if len(rng) == self.world_size:
            set_rng_state(rng[self.rank], self.device, self.data_generator)
        else:  # a different number of processes: fresh, still deterministic streams
            self._say(f"note: {source} was written by {len(rng)} process(es), this run has "
                      f"{self.world_size}; random streams restart from the seed and step")
            torch.manual_seed(self.config.seed + 7919 * self.rank + self.step)
            self.data_generator.manual_seed(self.config.seed * 1_000_003 + self.rank + self.step)

    def save(self) -> Optional[str]:
        """Checkpoint (collective when distributed; rank 0 writes)."""
        self._flush()  # never checkpoint weights whose losses were not checked
        state = self.state_dict()
        if self.rank == 0 and self.checkpoint_path:
            save_checkpoint(state, self.checkpoint_path)
            self.last_checkpoint_step = self.step
        return self.checkpoint_path

    # -- helpers -----------------------------------------------------------------------------
    def _say(self, message: str) -> None:
        if self.rank == 0 and self.config.progress:
            print(message, file=self.log_stream, flush=True)

    def _flush(self) -> None:
        note = None
        if self.last_checkpoint_step is not None:
            note = f"{self.checkpoint_path} (step {self.last_checkpoint_step})"
        self.buffer.flush(note)

    def _prepare_out(self) -> None:
        """Create the output folder, clear stale temp files, resume or refuse to overwrite."""
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
            self.load_state_dict(load_checkpoint(self.checkpoint_path), source=self.checkpoint_path)
            self.last_checkpoint_step = self.step
            self.log.truncate_after(self.step)
            self._say(f"resumed {self.checkpoint_path} at step {self.step}")
        elif os.path.exists(self.checkpoint_path):
            raise TrainingError(
                f"{self.out} already holds a checkpoint; pass --resume to continue it or choose another --out"
            )
        self.processes.barrier()

    def _should_stop(self) -> bool:
        """True (on every rank) after SIGINT/SIGTERM; ranks agree at logging steps only."""
        flag = self.stop.received is not None
        if self.distributed:
            if self.step % self.config.log_every != 0:
                return False
            flag = self.processes.any(flag, self.device)
            if flag and self.stop.received is None:
                self.stop.received = signal.SIGTERM
        if flag:
            self._say(f"\nreceived {self.stop.name} after step {self.step}: writing a checkpoint")
        return flag

    def _log_tc(self) -> None:
        last = self._last
        tc = float(minibatch_tc(last["z"], last["mu"], last["logvar"], self.dataset_size))
        row = {"step": self.step, "event": "tc", "tc_minibatch": tc}
        if "tc" in last:
            row["tc_discriminator"] = float(last["tc"])
        self.log.write(row)
        self._say(f"step {self.step}: TC minibatch estimate {tc:.4f}"
                  + (f", discriminator estimate {row['tc_discriminator']:.4f}" if "tc" in last else ""))

    def _evaluate(self) -> dict:
        metrics = evaluation.evaluate_metrics(self.vae_module, self.dataset, self.device, self.config.seed,
                                              self.config.metrics_preset)
        self.log.write({"step": self.step, "event": "eval", "metrics": metrics})
        return metrics

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> dict:
        """Train to ``config.steps``; returns the summary (also written to summary.json).
        On SIGINT/SIGTERM: checkpoint, summary["interrupted"] = signal name."""
        self._prepare_out()
        with self.stop.installed():
            return self._loop()

    def _loop(self) -> dict:
        cfg, start_step, train_time, t_start = self.config, self.step, 0.0, time.perf_counter()
        progress = Progress(self.log_stream, self.rank == 0 and cfg.progress, cfg.steps, self.terms)
        self.buffer.latest_step, evals = self.step, []
        while self.step < cfg.steps and not self._should_stop():
            t0 = time.perf_counter()
            values = self.whole_step()
            self.step += 1
            self.buffer.append(self.step, values)
            last = self.step == cfg.steps
            logging_step = self.step % cfg.log_every == 0 or last
            if self.device.type == "cpu" or logging_step:  # on a GPU the check waits for a log step
                self._flush()
            if self.device.type == "cuda" and logging_step:
                torch.cuda.synchronize(self.device)
            train_time += time.perf_counter() - t0
            rate = (self.step - start_step) / max(train_time, 1e-9)
            if logging_step:
                self.log.write({"step": self.step, **self.buffer.latest_values, "steps_per_s": round(rate, 3),
                                "time_s": round(time.perf_counter() - t_start, 3)})
            if cfg.log_tc_every and self.step % cfg.log_tc_every == 0:
                self._log_tc()
            if cfg.eval_every and self.step % cfg.eval_every == 0 and not last and self.rank == 0:
                evals.append({"step": self.step, "metrics": self._evaluate()})
            if self.step % cfg.checkpoint_every == 0 and not last:
                self.save()
            progress.update(self.step, rate, self.buffer.latest_values)
        self._flush()
        self.save()
        progress.close()
        summary = self._summary(start_step, train_time)
        if self.stop.received is not None and self.step < cfg.steps:
            summary["interrupted"] = self.stop.name
            self._say(f"stopped at step {self.step} ({self.stop.name}); checkpoint {self.checkpoint_path}")
            return summary
        if self.rank == 0:
            summary.update(self._finish(evals))
            summary["wall_time_s"] = round(time.perf_counter() - t_start, 2)
            if self.out:
                artefacts.write_json(os.path.join(self.out, "summary.json"), summary)
        return summary

    def _summary(self, start_step: int, train_time: float) -> dict:
        return {"step": self.step, "steps": self.config.steps, "objective": self.config.objective,
                "final": self.buffer.latest_values, "train_time_s": round(train_time, 2),
                "steps_per_s": round((self.step - start_step) / max(train_time, 1e-9), 3),
                "device": str(self.device), "world_size": self.world_size, "checkpoint": self.checkpoint_path}

    def _finish(self, evals: list) -> dict:
        """End of training on rank 0: KL per dimension, metrics, images."""
        cfg = self.config
        extra: dict = {"config": dataclasses.asdict(cfg)}
        vae = self.vae_module.eval()
        extra.update(evaluation.kl_per_dimension(vae, self.dataset, self.device, cfg.seed + 1))
        if cfg.metrics:
            t0 = time.perf_counter()
            self._say("evaluating the disentanglement metrics ...")
            extra["metrics"] = self._evaluate()
            extra["metrics_time_s"] = round(time.perf_counter() - t0, 2)
        if evals:
            extra["evals"] = evals
        if cfg.images and self.out:
            extra["images"] = artefacts.write_images(vae, self.dataset, self.device, self.out, seed=cfg.seed)
        vae.train()
        return extra


def train(config: TrainConfig, dataset=None) -> dict:
    """Build a Trainer and run it."""
    return Trainer(config, dataset=dataset).run()
