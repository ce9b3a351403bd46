"""The Trainer: builds a run from a TrainConfig, resumes it, and runs the loop.

The jobs live next door: options (config.py), the objective's step (steps.py), checkpoints and
RNG state (checkpoint.py), the log and progress line (records.py), images and summary
(artefacts.py), metrics (evaluation.py), processes and signals (processes.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from typing import Optional

import torch

from fastfvae.diagnostics import minibatch_tc
from fastfvae.models import VAE
from fastfvae.train import artefacts, evaluation, rundir
from fastfvae.train.checkpoint import (
    CHECKPOINT_FORMAT, CHECKPOINT_NAME, load_checkpoint, rng_state, save_checkpoint, set_rng_state,
)
from fastfvae.train.config import (
    TrainConfig, check_device_support, make_dataset, resolve_device, resume_changes, validate,
)
from fastfvae.train.errors import DiskFullError, TrainingError
from fastfvae.train.processes import Processes, StopRequested, StopSignals
from fastfvae.train.records import JsonlLog, Progress, TermBuffer
from fastfvae.train.steps import STEPS, Forwards
from fastfvae.train.whole_step import WholeStep, device_batches


class Trainer:
    """Owns the models (through the objective's step), data sampler and RNG; ``run()`` trains
    to ``config.steps``. ``dataset`` overrides the data set built from ``config.data``."""

    def __init__(self, config: TrainConfig, dataset=None, log_stream=None):
        # Every option, the output folder and the device are checked before anything is built
        # or written: a bad option fails in a second, not after training.
        validate(config)
        rundir.check(config.out, config.resume)
        self.config = cfg = config
        self.log_stream = log_stream if log_stream is not None else sys.stderr
        self.processes = procs = Processes()
        self.world_size, self.rank, self.distributed = procs.world_size, procs.rank, procs.distributed
        self.device = resolve_device(cfg.device, procs.local_rank)
        check_device_support(cfg, self.device)
        self.dataset = dataset if dataset is not None else make_dataset(cfg.data, cfg.dataset, cfg.scream_image, cfg.seed)
        self.dataset_size = len(self.dataset)
        self.channels = getattr(self.dataset, "num_channels", 1)
        _check_targets(self.dataset)
        procs.start(self.device)
        self._build_networks()
        self.whole_step = self._whole_step()

        self.terms = self.objective.terms
        self.buffer = TermBuffer(self.terms)
        self.step = 0
        self.train_time = 0.0  # seconds of training, over every session of the run
        self.out = cfg.out
        self.checkpoint_path = os.path.join(cfg.out, CHECKPOINT_NAME) if cfg.out else None
        self.last_checkpoint_step: Optional[int] = None
        self.log = JsonlLog(cfg.out, self.rank)
        self.stop = StopSignals()
        self.resumed_changes: dict = {}
        self.finished_summary: Optional[dict] = None
        self.folder_lock: Optional[rundir.FolderLock] = None
        self.earlier_summary: Optional[dict] = None  # summary.json before a resumed session

    def _build_networks(self) -> None:
        """The VAE and the objective's step (its networks and optimisers), seeded; an allocation
        failure becomes a TrainingError naming the sizes."""
        cfg = self.config
        # Same initial weights on every rank; then a per-rank stream for eps and permutations.
        torch.manual_seed(cfg.seed)
        try:
            # channels_last: oneDNN's convolutions run ~25% faster in it on the CPU (and cuDNN's in bf16).
            vae = VAE(cfg.z_dim, self.channels, backend=cfg.backend).to(self.device, memory_format=torch.channels_last)
            self.objective = STEPS[cfg.objective](cfg, vae, self.dataset_size)
        except (MemoryError, torch.OutOfMemoryError, RuntimeError) as error:
            if isinstance(error, RuntimeError) and "memory" not in str(error).lower():
                raise
            raise TrainingError(f"cannot allocate the networks (--z-dim {cfg.z_dim}, --disc-depth "
                                f"{cfg.disc_depth}, --disc-width {cfg.disc_width}): {error}") from None
        torch.manual_seed(cfg.seed + 7919 * self.rank)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(cfg.seed + 7919 * self.rank)
        # modulo 2**64: torch's seed range (the product overflows it for seeds near 2**63)
        self.data_generator = torch.Generator().manual_seed((cfg.seed * 1_000_003 + self.rank) % 2 ** 64)
        # --compile compiles the whole step (one graph) in one process; with several processes
        # (DDP forwards) the networks are compiled instead.
        self.objective.wrap(Forwards(ddp=self.processes.ddp(self.device), compile=cfg.compile and self.distributed))

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
        if cfg.graph and batches.host:
            raise TrainingError("--graph needs the data set's table on the device; it does not fit there (see above)")
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
                **self.objective.state_dict(), "rng": rng,
                "final": self.buffer.latest_values, "train_time_s": self.train_time}

    def load_state_dict(self, state: dict, source: str = "checkpoint") -> None:
        """Restore a checkpoint's weights, optimisers, step and random streams. Options that
        define what is trained must match (config.RESUME_MUST_MATCH); the others are this run's:
        the optimisers take this config's learning rates."""
        self.resumed_changes = resume_changes(state["config"], self.config, source)
        try:
            self.objective.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError) as error:
            raise TrainingError(f"{source}: its weights do not fit this run's networks: {error}") from None
        self.objective.set_learning_rates(self.config)
        self.step = int(state["step"])
        self.buffer.latest_values = dict(state.get("final") or {})
        self.train_time = float(state.get("train_time_s", 0.0))
        rng = state.get("rng") or []
        if len(rng) == self.world_size:
            set_rng_state(rng[self.rank], self.device, self.data_generator)
        else:  # a different number of processes: fresh, still deterministic streams
            self._say(f"note: {source} was written by {len(rng)} process(es), this run has "
                      f"{self.world_size}; random streams restart from the seed and step")
            torch.manual_seed((self.config.seed + 7919 * self.rank + self.step) % 2 ** 64)
            self.data_generator.manual_seed((self.config.seed * 1_000_003 + self.rank + self.step) % 2 ** 64)

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
        """Progress chatter (silenced by --quiet)."""
        if self.rank == 0 and self.config.progress:
            print(message, file=self.log_stream, flush=True)

    def _note(self, message: str) -> None:
        """What the user must know even with --quiet (options changed on resume, nothing done)."""
        if self.rank == 0:
            print(message, file=self.log_stream, flush=True)

    def _flush(self) -> None:
        note = None
        if self.last_checkpoint_step is not None:
            note = f"{self.checkpoint_path} (step {self.last_checkpoint_step})"
        self.buffer.flush(note)

    def _prepare_out(self) -> None:
        """Lock, create and probe the output folder (rank 0, the process that writes), then
        resume from its checkpoint."""
        if self.out and self.rank == 0:
            self.folder_lock = rundir.claim(self.out, self.config.resume)
            rundir.prepare(self.out)
        if self.config.resume:
            self._resume()
        self.processes.barrier()

    def _resume(self) -> None:
        """Load the checkpoint; a finished run is left as it is (``finished_summary``); a
        checkpoint past --steps is refused; changed options are logged."""
        source = self.checkpoint_path
        state = load_checkpoint(source)
        self.earlier_summary = _read_summary(self.out)
        if int(state["step"]) > self.config.steps:
            raise TrainingError(f"--steps {self.config.steps}: {source} is at step {state['step']}; pass "
                                f"--steps {state['step']} or more (a run is never shortened)")
        self.load_state_dict(state, source=source)
        self.last_checkpoint_step = self.step
        if self.step == self.config.steps:
            self.finished_summary = _finished_summary(self.out, self.step)
            if self.finished_summary is not None:
                return  # nothing to do, nothing rewritten
        self.log.truncate_after(self.step)
        self._say(f"resumed {source} at step {self.step}")
        if self.resumed_changes:
            self.log.write({"step": self.step, "event": "resume", "changed": self.resumed_changes})
            self._note("options changed on resume (applied): " + ", ".join(
                f"{k} {old!r} -> {new!r}" for k, (old, new) in self.resumed_changes.items()))

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

    def _evaluate_during_training(self, evals: list) -> None:
        """--eval-every: the metrics (minutes on a CPU) stop at once on a signal; the loop then
        checkpoints and stops as after any step."""
        self.stop.immediate = True
        try:
            evals.append({"step": self.step, "metrics": self._evaluate()})
        except StopRequested:
            self._say(f"\nreceived {self.stop.name} during the metrics at step {self.step}: skipped them")
        finally:
            self.stop.immediate = False

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> dict:
        """Train to ``config.steps``; returns the summary (also written to summary.json).
        On SIGINT/SIGTERM: checkpoint, summary["interrupted"] = signal name. The output folder
        is locked from the first write to the return (rundir.FolderLock)."""
        try:
            self._prepare_out()
            if self.finished_summary is not None:
                self._note(f"{self.out} holds a finished run (step {self.step}); nothing to do, nothing rewritten")
                return self.finished_summary
            with self.stop.installed():
                return self._loop()
        finally:
            if self.folder_lock is not None:
                self.folder_lock.release()
                self.folder_lock = None

    def _loop(self) -> dict:
        cfg, start_step, session_time, t_start = self.config, self.step, 0.0, time.perf_counter()
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
            session_time += time.perf_counter() - t0
            self.train_time += time.perf_counter() - t0
            rate = (self.step - start_step) / max(session_time, 1e-9)
            if logging_step:
                self.log.write({"step": self.step, **self.buffer.latest_values, "steps_per_s": round(rate, 3),
                                "time_s": round(time.perf_counter() - t_start, 3)})
            if cfg.log_tc_every and self.step % cfg.log_tc_every == 0:
                self._log_tc()
            if cfg.eval_every and self.step % cfg.eval_every == 0 and not last and self.rank == 0:
                self._evaluate_during_training(evals)
            if self.step % cfg.checkpoint_every == 0 and not last:
                self.save()
            progress.update(self.step, rate, self.buffer.latest_values)
        self._flush()
        self.save()
        progress.close()
        summary = self._summary(start_step, session_time)
        if self.stop.received is not None and self.step < cfg.steps:
            summary["interrupted"] = self.stop.name
            self._say(f"stopped at step {self.step} ({self.stop.name}); checkpoint {self.checkpoint_path}")
            return summary
        if self.rank == 0:
            try:
                summary.update(self._finish(evals))
                summary["wall_time_s"] = round(time.perf_counter() - t_start, 2)
                if self.out:
                    summary.update(artefacts.earlier_records(self.out, self.log.path, summary, self.earlier_summary))
                    artefacts.write_json(os.path.join(self.out, rundir.SUMMARY_NAME), summary)
            except DiskFullError as error:
                raise DiskFullError(error.path, error.reason, (
                    f"training is complete and {self.checkpoint_path} holds step {self.step}; free some space "
                    f"and run the same command with --resume to finish the images and summary.json")) from None
        return summary

    def _summary(self, start_step: int, session_time: float) -> dict:
        # steps_per_s and session_*: this session (a resumed run's segment); train_time_s and
        # run_steps_per_s: every session of the run (training only, no evaluation).
        summary = {"step": self.step, "steps": self.config.steps, "objective": self.config.objective,
                   "final": self.buffer.latest_values, "train_time_s": round(self.train_time, 2),
                   "steps_per_s": round((self.step - start_step) / max(session_time, 1e-9), 3),
                   "session_steps": self.step - start_step, "session_time_s": round(session_time, 2),
                   "run_steps_per_s": round(self.step / max(self.train_time, 1e-9), 3),
                   "device": str(self.device), "world_size": self.world_size, "checkpoint": self.checkpoint_path}
        if self.resumed_changes:
            summary["changed_on_resume"] = self.resumed_changes
        return summary

    def _finish(self, evals: list) -> dict:
        """End of training on rank 0: KL per dimension, metrics, images, curves. A stop signal
        here (or one that arrived after the last step) ends this phase at once; the summary then
        holds what is known and ``interrupted``."""
        cfg = self.config
        extra: dict = {"config": dataclasses.asdict(cfg)}
        if evals:
            extra["evals"] = evals
        vae = self.vae_module.eval()
        self.stop.immediate = True
        try:
            if self.stop.received is not None:
                raise StopRequested(self.stop.received)
            extra.update(evaluation.kl_per_dimension(vae, self.dataset, self.device, cfg.seed + 1))
            if cfg.metrics:
                t0 = time.perf_counter()
                self._say("evaluating the disentanglement metrics ...")
                extra["metrics"] = self._evaluate()
                extra["metrics_time_s"] = round(time.perf_counter() - t0, 2)
            if cfg.images and self.out:
                extra["images"] = self._write_images(vae)
                extra["images_step"] = self.step
        except StopRequested:
            extra["interrupted"] = self.stop.name
            extra["interrupted_during"] = "end-of-run evaluation"
            self._say(f"\nreceived {self.stop.name} during the end-of-run evaluation: stopping; training is "
                      f"complete (checkpoint {self.checkpoint_path})")
        finally:
            self.stop.immediate = False
            vae.train()
        return extra

    def _write_images(self, vae: VAE) -> dict:
        paths = artefacts.write_images(vae, self.dataset, self.device, self.out, seed=self.config.seed)
        series = artefacts.read_series(self.log.path) if self.log.path and os.path.exists(self.log.path) else {}
        if series:
            paths["curves"] = os.path.join(self.out, "curves.png")
            artefacts.write_curves(paths["curves"], series)
        # The step these images show, for a later session that does not redraw them.
        self.log.write({"step": self.step, "event": "images",
                        "files": {name: os.path.basename(p) for name, p in paths.items()}})
        return paths


def _check_targets(dataset) -> None:
    """The Bernoulli reconstruction loss needs pixels in [0, 1]: one batch checked once here
    (the dSprites file is checked whole at load), never a per-step host sync. Data sets that
    cannot render (benchmarks pass a stand-in that only has a length) are not checked."""
    if not (hasattr(dataset, "images") and hasattr(dataset, "sample_factors")):
        return
    images = dataset.images(dataset.sample_factors(64, torch.Generator().manual_seed(0)))
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        raise TrainingError(f"the data set's pixels must lie in [0, 1] (Bernoulli targets), got values "
                            f"in [{low}, {high}] (a 0/255 data set? divide it by 255)")


def _read_summary(out: Optional[str]) -> Optional[dict]:
    """The run folder's summary.json, or None when there is none (or it is unreadable)."""
    path = os.path.join(out, rundir.SUMMARY_NAME) if out else None
    try:
        with open(path) as f:
            summary = json.load(f)
    except (TypeError, OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def _finished_summary(out: Optional[str], step: int) -> Optional[dict]:
    """The summary of a run that completed (training and end-of-run evaluation) at ``step``, or None."""
    summary = _read_summary(out)
    complete = summary is not None and summary.get("step") == step and "interrupted" not in summary
    return summary if complete else None


def train(config: TrainConfig, dataset=None) -> dict:
    """Build a Trainer and run it."""
    return Trainer(config, dataset=dataset).run()
