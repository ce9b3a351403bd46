"""On-disk caches of decoded / resized image tables (SmallNORB's and Cars3D's resized images,
Shapes3D's images out of the compressed h5, a compressed MPI3D npz), like dSprites' packed
table (fastfvae/data/packed.py): built once, then memory-mapped from the cache.

Where: the user's cache folder (``fastfvae.data.packed.cache_dir()``: $XDG_CACHE_HOME/fastfvae,
else ~/.cache/fastfvae). Name: ``<set>-table-v<version>-<key>.npy``, a plain NumPy file of uint8
(N, 64, 64, C). The key hashes the set's name, its grid sizes, the table's rule version and, for
every source file, its size and the SHA-256 of its first and last 64 KiB (its header and its
tail: the files are GB, hashing them whole would cost more than decoding them), so a changed
source, rule or grid names another file and a stale table is never read. A file that is not
the expected array (wrong shape or dtype, truncated) is rebuilt, with a warning. Writes go to a
temporary file in the same folder renamed into place, so a reader never sees half a table; when
the folder cannot be written (read-only, full disk) a warning says so and the table stays in
memory.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

TABLE_VERSION = 1
HASHED_BYTES = 1 << 16  # from each end of each source file


def source_key(name: str, grid_sizes: Sequence[int], sources: Sequence[str], rule: str = "") -> str:
    """A hash of what a table is built from (module docstring)."""
    digest = hashlib.sha256(repr((name, tuple(grid_sizes), TABLE_VERSION, rule)).encode())
    for path in sources:
        size = os.path.getsize(path)
        digest.update(f"{os.path.basename(path)}:{size}".encode())
        with open(path, "rb") as f:
            digest.update(f.read(HASHED_BYTES))
            f.seek(max(0, size - HASHED_BYTES))
            digest.update(f.read(HASHED_BYTES))
    return digest.hexdigest()


def table_path(name: str, key: str) -> Path:
    from fastfvae.data.packed import cache_dir
    return cache_dir() / f"{name}-table-v{TABLE_VERSION}-{key[:16]}.npy"


def _read(path: Path, shape: tuple) -> np.ndarray:
    table = np.load(path, mmap_mode="r", allow_pickle=False)
    if table.dtype != np.uint8 or table.shape != shape:
        raise ValueError(f"holds {table.dtype} {table.shape}, expected uint8 {shape}")
    return table


def _write(path: Path, table: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, table, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def cached_table(name: str, key: str, shape: tuple, build: Callable[[], np.ndarray]) -> np.ndarray:
    """The cached uint8 table of (name, key), memory-mapped, or ``build()`` (then written to the
    cache; kept in memory with a warning when that fails)."""
    path = table_path(name, key)
    try:
        return _read(path, tuple(shape))
    except (FileNotFoundError, NotADirectoryError):
        pass
    except (OSError, ValueError, EOFError) as error:
        warnings.warn(f"{name}: rebuilding the cached image table {path}: {error}", stacklevel=3)
    table = build()
    if table.dtype != np.uint8 or table.shape != tuple(shape):
        raise ValueError(f"{name}: build() returned {table.dtype} {table.shape}, expected uint8 {tuple(shape)}")
    try:
        _write(path, table)
    except OSError as error:
        warnings.warn(f"{name}: cannot write the image table cache {path} ({error}); the table stays in memory",
                      stacklevel=3)
        return table
    return _read(path, tuple(shape))
