"""Keep freed host memory in the process (glibc): what the ``fastfvae`` commands do at start.

Why: PyTorch's CPU tensors come from malloc. glibc serves blocks above its mmap threshold with
fresh mmap calls and gives freed heap tops back to the kernel past its trim threshold, so every
training step or encoder batch faults its activations in again, page by page (measured on this
project's 2-core CPU: ~20,000 page faults a FactorVAE step at B = 64; the paper's encoder on
8,192 dSprites images 2.1 s with 1.6 s of system time, 1.15 s with none once memory is kept and
batches stay under the 32 MiB cap below).

``retain_freed_memory`` raises the mmap threshold to glibc's maximum for mallopt (32 MiB: larger
blocks are still mmapped, hence the 128-image chunks of the evaluation encoders) and never trims
the heap, so a process's memory stays at its peak instead of returning to the kernel between
steps. A library should not change its host's allocator behind its back: the commands call it,
and a user's own loop can call it (``fastfvae.memory.retain_freed_memory()``) or set the same
through the environment before Python starts: ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967295``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
NEVER_TRIM = 2**31 - 1                 # mallopt takes an int


def retain_freed_memory() -> bool:
    """Set glibc's mmap threshold to 32 MiB and stop heap trimming; False (nothing changed) on a
    system without glibc's mallopt (macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
