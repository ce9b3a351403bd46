"""The trainer's errors: both are TrainingError, which the CLI prints as one ``fastfvae: error:`` line."""
from __future__ import annotations

import contextlib
import errno
from typing import Iterator, Optional

# A write that failed for want of space: no space left, over a quota, over the file size limit.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# torch.save reports a short write as a RuntimeError from its zip writer, keeping the OSError (if
# any) only as the exception's context: "[enforce fail at inline_container.cc:...] unexpected pos".
SHORT_WRITE_MESSAGES = ("unexpected pos", "file write failed")


class TrainingError(RuntimeError):
    """A run that cannot start or continue (bad options, unusable folder, unreadable checkpoint)."""


class NonFiniteLossError(TrainingError):
    """A loss term became NaN or Inf; ``step`` and ``terms`` say where."""

    def __init__(self, step: int, terms: list[str], values: dict, checkpoint: Optional[str]):
        self.step, self.terms = step, terms
        shown = ", ".join(f"{t} = {values[t]}" for t in terms)
        kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written yet"
        super().__init__(f"step {step}: non-finite loss term(s) {shown}; training stopped, {kept}")


class DiskFullError(TrainingError):
    """A file could not be written for want of disk space; ``path`` names it."""

    def __init__(self, path: str, reason: str, note: str = ""):
        self.path, self.reason = path, reason
        super().__init__(f"the disk is full: cannot write {path} ({reason})" + (f"; {note}" if note else ""))


def disk_full_reason(error: BaseException) -> Optional[str]:
    """Why ``error`` means a full disk ("No space left on device", "File too large", ...), or
    None when it is another failure. Follows the cause/context chain: torch.save wraps the
    OSError of its write in a RuntimeError."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_FULL_ERRNOS:
            return seen.strerror or str(seen)
        seen = seen.__cause__ or seen.__context__
    if isinstance(error, RuntimeError) and any(text in str(error) for text in SHORT_WRITE_MESSAGES):
        return "a short write: " + str(error).splitlines()[0].strip()
    return None


@contextlib.contextmanager
def writing(path: str, note: str = "") -> Iterator[None]:
    """Inside the block a full disk becomes a DiskFullError naming ``path`` (and ``note``);
    every other error passes unchanged."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        reason = disk_full_reason(error)
        if reason is None:
            raise
        raise DiskFullError(path, reason, note) from error
