"""The trainer's errors: both are TrainingError, which the CLI prints as one ``fastfvae: error:`` line."""
from __future__ import annotations

from typing import Optional


class TrainingError(RuntimeError):
    """A run that cannot start or continue (bad options, unusable folder, unreadable checkpoint)."""


class NonFiniteLossError(TrainingError):
    """A loss term became NaN or Inf; ``step`` and ``terms`` say where."""

    def __init__(self, step: int, terms: list[str], values: dict, checkpoint: Optional[str]):
        self.step, self.terms = step, terms
        shown = ", ".join(f"{t} = {values[t]}" for t in terms)
        kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written yet"
        super().__init__(f"step {step}: non-finite loss term(s) {shown}; training stopped, {kept}")
