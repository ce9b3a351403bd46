"""What a run records as it goes: the JSONL log, the per-step terms' finiteness check, the progress line.

log.jsonl holds one JSON object per line: training rows ``{"step", <terms>, "steps_per_s",
"time_s"}`` every ``log_every`` steps, and event rows ``{"step", "event": "eval" | "tc", ...}``.
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional, TextIO

import torch

from fastfvae.train.errors import NonFiniteLossError, writing

LOG_NAME = "log.jsonl"


class JsonlLog:
    """Appends rows to ``out``/log.jsonl; a no-op without ``out`` or off rank 0."""

    def __init__(self, out: Optional[str], rank: int = 0):
        self.path = os.path.join(out, LOG_NAME) if out and rank == 0 else None

    def write(self, row: dict) -> None:
        if self.path:
            with writing(self.path), open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop rows of steps past ``step`` (after a resume: the run died after its checkpoint)."""
        if not self.path or not os.path.exists(self.path):
            return
        keep = []
        with open(self.path) as f:
            for line in f:
                try:
                    if json.loads(line).get("step", 0) <= step:
                        keep.append(line)
                except json.JSONDecodeError:
                    pass  # a line cut by a crash
        tmp = f"{self.path}.tmp-{os.getpid()}"
        try:
            with writing(self.path), open(tmp, "w") as f:
                f.writelines(keep)
                f.flush()
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


class TermBuffer:
    """Per-step loss terms kept on the device until ``flush`` copies them to the host at once
    (one synchronisation per flush, not per step) and stops on the first non-finite one."""

    def __init__(self, terms: tuple[str, ...]):
        self.terms = terms
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.latest_values: dict = {}
        self.latest_step = 0

    def append(self, step: int, values: torch.Tensor) -> None:
        """values: float32 (len(terms),) on the device."""
        self.pending.append((step, values))

    def flush(self, checkpoint_note: Optional[str]) -> None:
        """Raise NonFiniteLossError (naming ``checkpoint_note`` as the last good checkpoint) or
        update ``latest_values``/``latest_step``."""
        if not self.pending:
            return
        steps = [s for s, _ in self.pending]
        rows = torch.stack([v for _, v in self.pending]).cpu()
        self.pending.clear()
        finite = torch.isfinite(rows)
        if not bool(finite.all()):
            r = int((~finite.all(dim=1)).nonzero()[0])
            bad = [t for t, ok in zip(self.terms, finite[r].tolist()) if not ok]
            raise NonFiniteLossError(steps[r], bad, dict(zip(self.terms, rows[r].tolist())), checkpoint_note)
        self.latest_values = dict(zip(self.terms, rows[-1].tolist()))
        self.latest_step = steps[-1]


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """A carriage-return progress line on a TTY, plain lines every 5% otherwise."""

    def __init__(self, stream: TextIO, enabled: bool, total_steps: int, terms: tuple[str, ...]):
        self.stream, self.enabled, self.total, self.terms = stream, enabled, total_steps, terms
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.every = max(1, total_steps // 20)
        self.last_draw = 0.0
        self.width = 0

    def line(self, step: int, rate: float, values: dict) -> str:
        terms = " ".join(f"{k} {values[k]:.4g}" for k in self.terms if k in values)
        eta = (self.total - step) / max(rate, 1e-9)
        return " | ".join([f"step {step}/{self.total}", terms, f"{rate:.2f} steps/s, eta {format_duration(eta)}"])

    def update(self, step: int, rate: float, values: dict) -> None:
        if not self.enabled:
            return
        if self.tty:
            now = time.perf_counter()
            if now - self.last_draw < 0.2 and step != self.total:
                return
            self.last_draw = now
            text = self.line(step, rate, values)
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
            self.stream.flush()
        elif step % self.every == 0 or step == self.total:
            print(self.line(step, rate, values), file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
