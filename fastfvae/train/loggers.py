"""``fastfvae train --logger tensorboard|wandb``: the run's records mirrored to the field's viewers.

log.jsonl stays the record of truth; a logger receives every row written there (records.JsonlLog
passes them on) and the end-of-run images:

    training rows   scalars train/<term> (every loss term; FactorVAE: d_loss, d_acc, tc estimate)
    "tc" rows       scalars tc/tc_minibatch, tc/tc_discriminator (--log-tc-every)
    "eval" rows     scalars metrics/<metric>.<score> (the battery's headline scores, at
                    --eval-every and at the end)
    images          images/reconstructions, images/traversals (the end-of-run PNGs)
    options         the run's TrainConfig as hyperparameters (TensorBoard's hparams with the
                    final terms and scores; W&B's run config)

TensorBoard writes event files to <out>/tensorboard through torch.utils.tensorboard (package
``tensorboard``, extra ``fastfvae[tensorboard]``). W&B writes an offline run under <out>/wandb
(package ``wandb``, extra ``fastfvae[wandb]``): no network is needed, ``wandb sync`` uploads it
later; WANDB_MODE=online logs live instead. WANDB_RUN_GROUP (set by ``fastfvae sweep`` to the
study's name) groups a study's runs. On --resume both continue the same run: TensorBoard drops
its events past the checkpoint's step (as log.jsonl does), W&B resumes the run id kept in
<out>/wandb/fastfvae-run-id.
"""
from __future__ import annotations

import dataclasses
import math
import os
import uuid
from typing import Optional, Sequence

import numpy as np

from fastfvae.train.errors import TrainingError

LOGGERS = ("tensorboard", "wandb")


def check_names(names: Sequence[str]) -> None:
    """TrainingError for an unknown logger or one whose package is missing (before any work)."""
    for name in names:
        if name not in LOGGERS:
            raise TrainingError(f"--logger: expected one of {LOGGERS}, got {name!r}")
        _import(name)


def _import(name: str):
    try:
        if name == "tensorboard":
            import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
            from torch.utils.tensorboard import SummaryWriter
            return SummaryWriter
        import wandb
        return wandb
    except ImportError:
        raise TrainingError(f"--logger {name}: the {name} package is not installed; "
                            f"pip install 'fastfvae[{name}]' (or pip install {name})") from None


def _scalars(row: dict) -> dict[str, float]:
    """The tagged scalars of one log.jsonl row."""
    event = row.get("event")
    out = {}
    if event is None:
        for key, value in row.items():
            if key not in ("step", "time_s") and _finite(value):
                out[f"train/{key}"] = float(value)
    elif event == "tc":
        out = {f"tc/{k}": float(v) for k, v in row.items() if k.startswith("tc_") and _finite(v)}
    elif event == "eval":
        out = {f"metrics/{k}": v for k, v in headline_scores(row.get("metrics")).items()}
    return out


def headline_scores(metrics) -> dict[str, float]:
    """{"<metric>.<score>": value} of a metric battery result (metrics.suite.SCORE_KEYS)."""
    from fastfvae.metrics.suite import SCORE_KEYS
    out = {}
    if isinstance(metrics, dict):
        for metric, keys in SCORE_KEYS.items():
            entry = metrics.get(metric)
            if isinstance(entry, dict):
                out.update({f"{metric}.{k}": float(entry[k]) for k in keys if _finite(entry.get(k))})
    return out


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _hparams(config) -> dict:
    """TrainConfig as flat hyperparameters (None as the text "none": viewers take numbers and text)."""
    out = {}
    for key, value in dataclasses.asdict(config).items():
        out[key] = value if isinstance(value, (int, float, str, bool)) else str(value).lower()
    return out


def _png_pixels(path: str) -> np.ndarray:
    """(H, W, 3) uint8 of a PNG (grey expanded to RGB)."""
    from PIL import Image
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class TensorBoardLogger:
    def __init__(self, out: str, config, start_step: int):
        writer_class = _import("tensorboard")
        # purge_step: after a resume, the events past the checkpoint's step are dropped (its own
        # step's row was logged before the checkpoint was written, so it stays).
        self.writer = writer_class(log_dir=os.path.join(out, "tensorboard"),
                                   purge_step=start_step + 1 if start_step else None)
        self.config = config
        self.last: dict[str, float] = {}

    def row(self, row: dict) -> None:
        for tag, value in _scalars(row).items():
            self.writer.add_scalar(tag, value, int(row["step"]))
            self.last[tag] = value

    def images(self, step: int, paths: dict) -> None:
        for name in ("reconstructions", "traversals"):
            if name in paths and os.path.exists(paths[name]):
                self.writer.add_image(f"images/{name}", _png_pixels(paths[name]), step, dataformats="HWC")

    def close(self, finished: bool) -> None:
        if finished:  # the hparams table: the options and the run's final values
            metrics = {f"hparam/{k}": v for k, v in self.last.items()}
            self.writer.add_hparams(_hparams(self.config), metrics or {"hparam/none": 0.0}, run_name=".")
        self.writer.close()


class WandbLogger:
    def __init__(self, out: str, config, start_step: int):
        wandb = _import("wandb")
        folder = os.path.join(out, "wandb")
        os.makedirs(folder, exist_ok=True)
        id_path = os.path.join(folder, "fastfvae-run-id")
        if start_step and os.path.exists(id_path):
            with open(id_path) as f:
                run_id = f.read().strip()
        else:
            run_id = uuid.uuid4().hex[:8]  # W&B run ids: lowercase letters and digits
            with open(id_path, "w") as f:
                f.write(run_id + "\n")
        self.wandb = wandb
        self.run = wandb.init(
            dir=out, id=run_id, resume="allow", mode=os.environ.get("WANDB_MODE", "offline"),
            project=os.environ.get("WANDB_PROJECT", "fastfvae"), group=os.environ.get("WANDB_RUN_GROUP"),
            name=os.environ.get("WANDB_NAME") or os.path.basename(os.path.abspath(out)),
            config=_hparams(config), settings=wandb.Settings(console="off", silent=True),
        )

    def row(self, row: dict) -> None:
        scalars = _scalars(row)
        if scalars:
            self.run.log(scalars, step=int(row["step"]))

    def images(self, step: int, paths: dict) -> None:
        images = {f"images/{name}": self.wandb.Image(paths[name]) for name in ("reconstructions", "traversals")
                  if name in paths and os.path.exists(paths[name])}
        if images:
            self.run.log(images, step=step)

    def close(self, finished: bool) -> None:
        self.run.finish(exit_code=0 if finished else 1)


class Loggers:
    """The run's loggers as one: ``row``, ``images``, ``close``; empty when none is asked for."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    @classmethod
    def open(cls, names: Sequence[str], out: Optional[str], config, start_step: int) -> "Loggers":
        if not names or not out:
            return cls([])
        check_names(names)
        kinds = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger}
        return cls([kinds[name](out, config, start_step) for name in dict.fromkeys(names)])

    def row(self, row: dict) -> None:
        for sink in self.sinks:
            sink.row(row)

    def images(self, step: int, paths: dict) -> None:
        for sink in self.sinks:
            sink.images(step, paths)

    def close(self, finished: bool) -> None:
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.close(finished)
