"""The run folder (``--out``): checked before anything is built, created and probed before the
first step, so an unusable folder fails in a second with one clear line, never after training.

A folder is a run when it holds any of RUN_FILES. A fresh run refuses such a folder (it would
mix two runs' records); --resume needs one with a checkpoint.
"""
from __future__ import annotations

import glob
import os
from typing import Optional

from fastfvae.train.checkpoint import CHECKPOINT_NAME
from fastfvae.train.errors import TrainingError
from fastfvae.train.records import LOG_NAME

SUMMARY_NAME = "summary.json"
RUN_FILES = (CHECKPOINT_NAME, LOG_NAME, SUMMARY_NAME)
# Temp files of atomic writes: "<name>.tmp-<pid>" now; "<name>.json.tmp" from earlier versions.
STALE_PATTERNS = ("*.tmp-*", ".*.tmp-*", "*.json.tmp")


def check(out: Optional[str], resume: bool) -> None:
    """Refuse an ``out`` that cannot hold this run; reads only, creates nothing."""
    if out is None:
        if resume:
            raise TrainingError("--resume needs --out DIR (the folder of the run to continue)")
        return
    if os.path.exists(out) and not os.path.isdir(out):
        raise TrainingError(f"--out {out}: is a file, expected a folder")
    if resume:
        if not os.path.isdir(out):
            raise TrainingError(f"--resume: the folder {out} does not exist (nothing to continue)")
        return
    if not os.path.isdir(out):
        _check_creatable(out)
        return
    present = [name for name in RUN_FILES if os.path.exists(os.path.join(out, name))]
    if CHECKPOINT_NAME in present:
        raise TrainingError(f"{out} already holds a checkpoint; pass --resume to continue it or choose another --out")
    if present:
        raise TrainingError(
            f"{out} holds {', '.join(present)} of an earlier run but no checkpoint to continue; "
            f"remove them or choose another --out (nothing was changed)"
        )


def _check_creatable(out: str) -> None:
    """The nearest existing ancestor of ``out`` must be a folder we may write into."""
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise TrainingError(f"--out {out}: {parent} is a file, expected a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TrainingError(f"--out {out}: cannot create it, {parent} is not writable")


def prepare(out: str) -> None:
    """Create ``out``, prove a file can be written there, and remove stale ``*.tmp-*`` files
    (leftovers of an interrupted write; the real files are intact)."""
    probe = os.path.join(out, f".write-probe.tmp-{os.getpid()}")
    try:
        os.makedirs(out, exist_ok=True)
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        raise TrainingError(f"--out {out}: cannot write there ({error.strerror or error})") from None
    for pattern in STALE_PATTERNS:
        for stale in glob.glob(os.path.join(out, pattern)):
            os.remove(stale)
