"""The run folder (``--out``): checked before anything is built, created and probed before the
first step, so an unusable folder fails in a second with one clear line, never after training.

A folder is a run when it holds any of RUN_FILES. A fresh run refuses such a folder (it would
mix two runs' records); --resume needs one with a checkpoint.

A run owns its folder for its whole life: the process that writes (rank 0) holds an exclusive
``flock`` on LOCK_NAME in it, taken before it writes anything there. The kernel drops the lock
when the process ends, however it ends (SIGKILL, a crash), so no stale lock ever blocks
``--resume``; a second run into a held folder is refused naming the holder's pid, which the
holder writes into the lock file. Reading a run (``evaluate``, ``traverse``) takes no lock.
"""
from __future__ import annotations

import glob
import os
import time
from typing import Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no folder lock
    fcntl = None

from fastfvae.train.checkpoint import CHECKPOINT_NAME
from fastfvae.train.errors import TrainingError
from fastfvae.train.records import LOG_NAME

SUMMARY_NAME = "summary.json"
LOCK_NAME = ".fastfvae.lock"
RUN_FILES = (CHECKPOINT_NAME, LOG_NAME, SUMMARY_NAME)
# Temp files of atomic writes: "<name>.tmp-<pid>" now; "<name>.json.tmp" from earlier versions.
STALE_PATTERNS = ("*.tmp-*", ".*.tmp-*", "*.json.tmp")


def check(out: Optional[str], resume: bool, probe_lock: bool = True) -> None:
    """Refuse an ``out`` that cannot hold this run (held by another run when ``probe_lock``);
    reads only, creates nothing."""
    if out is None:
        if resume:
            raise TrainingError("--resume needs --out DIR (the folder of the run to continue)")
        return
    if os.path.exists(out) and not os.path.isdir(out):
        raise TrainingError(f"--out {out}: is a file, expected a folder")
    if probe_lock and os.path.isdir(out):
        _refuse_if_held(out)  # first: a live run's files are not "an earlier run's"
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


def _refuse_if_held(out: str) -> None:
    """TrainingError naming the holder when another process holds ``out``'s lock (probed, not kept)."""
    path = os.path.join(out, LOCK_NAME)
    if fcntl is None or not os.path.exists(path):
        return
    try:
        handle = open(path)
    except OSError:
        return  # unreadable: claim() reports it when it takes the lock
    with handle:
        try:  # shared: probes (every rank of a torchrun job probes) never block one another
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingError(_held_message(out, handle.read())) from None
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _held_message(out: str, pid_text: str) -> str:
    pid = pid_text.strip()
    holder = f"pid {pid}" if pid.isdigit() else "pid unknown"
    return (f"--out {out}: another fastfvae run ({holder}) is writing to this folder; wait for it to end "
            f"or choose another --out (nothing was changed)")


def _lock_exclusive(handle, tries: int = 20, wait_s: float = 0.05) -> None:
    """flock(LOCK_EX) without blocking on a holder; a probe's momentary shared lock is waited
    out (``tries`` x ``wait_s``). BlockingIOError when the lock stays held."""
    for attempt in range(tries):
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == tries - 1:
                raise
            time.sleep(wait_s)


class FolderLock:
    """An exclusive ``flock`` on ``out``/LOCK_NAME, held until ``release()`` (which removes the
    file) or the process ends (a killed run leaves the file, unlocked: harmless)."""

    def __init__(self, out: str):
        self.path = os.path.join(out, LOCK_NAME)
        self.file = None
        if fcntl is None:
            return
        while self.file is None:
            # "a+": opening never truncates, so a refused run changes nothing in the holder's file.
            handle = open(self.path, "a+")
            try:
                _lock_exclusive(handle)
            except BlockingIOError:
                handle.seek(0)
                pid_text = handle.read()
                handle.close()
                raise TrainingError(_held_message(out, pid_text)) from None
            except BaseException:
                handle.close()
                raise
            if _same_file(handle, self.path):
                self.file = handle
            else:  # locked a file that its holder removed on release: lock the current one
                handle.close()
        self.file.truncate(0)
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def release(self) -> None:
        """Remove the lock file, then drop the lock (removed first, under the lock, so that no
        other run can hold a lock on the removed file while a third locks a new one)."""
        if self.file is not None:
            try:
                os.remove(self.path)
            except OSError:
                pass  # a folder that became read-only: the lock still drops with the file's closing
            self.file.close()
            self.file = None


def _same_file(handle, path: str) -> bool:
    """True when ``path`` still names the file open as ``handle``."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(handle.fileno())
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def claim(out: str, resume: bool) -> FolderLock:
    """Create ``out`` if needed, lock it, then check it again under the lock (another run may
    have written there since ``check``). The lock file is the only thing created before that."""
    try:
        os.makedirs(out, exist_ok=True)
        lock = FolderLock(out)
    except OSError as error:
        raise TrainingError(f"--out {out}: cannot write there ({error.strerror or error})") from None
    try:
        check(out, resume, probe_lock=False)  # this process holds the lock now
    except BaseException:
        lock.release()
        raise
    return lock
