"""Bit-packed image tables: a binary data set held as 512 bytes an image, cached on disk.

dSprites' 737,280 images are binary 64x64: 8 pixels a byte make 512 bytes an image, 377 MB in
all, small enough to live on the training device, where ``fastfvae.gather_images`` unpacks a
batch in one pass (DESIGN.md §12). Bit order "little": pixel p = 64 * row + col of an image is
bit p % 8 of byte p // 8 (``numpy.packbits(bitorder="little")``; fastfvae/reference/gather_images.py).

The cache is generic: a data set's module gives it a name, a key of its source and a builder
(dSprites: fastfvae/data/dsprites.py, whose key hashes the renderer's code and geometry, or the
npz file's bytes). The table is built once, written to the user's cache directory
($XDG_CACHE_HOME/fastfvae, else ~/.cache/fastfvae) and read from there afterwards. The file name
carries the format version and the key, so a changed renderer or file gets a new table; the header records the SHA-256 of the payload, checked on every load. A file
that is missing, truncated, corrupt or written for another source is rebuilt; it is written to a
temporary file in the same folder and renamed into place, so a reader never sees half a table.
When the cache cannot be written (a read-only or full disk, a file where the folder should be),
a warning says so once and the built table is used from memory.

File layout: MAGIC (8 bytes), header length (8 bytes, little-endian), a JSON header
{format, key, rows, row_bytes, bitorder, sha256}, then rows * row_bytes payload bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

IMAGE_SIDE = 64
ROW_BYTES = IMAGE_SIDE * IMAGE_SIDE // 8  # 512
FORMAT_VERSION = 1
MAGIC = b"FFVPACK\x00"
SUFFIX = ".ffvpack"
BUILD_CHUNK = 16384  # images rendered and packed at a time while building (64 MB of uint8 pixels)


class NotPackable(ValueError):
    """The data set's images are not binary 64x64 (a caller falls back to rendering)."""


# ---------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------
def pack_images(images) -> np.ndarray:
    """uint8/bool images (n, 64, 64) or (n, 1, 64, 64) of 0/1 -> uint8 (n, 512), bit order "little".

    Raises NotPackable when the images are not single-channel 64x64 or hold a value other than 0/1.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise NotPackable(f"images: expected shape (n, 64, 64) or (n, 1, 64, 64), got {images.shape}")
    if images.dtype not in (np.uint8, np.bool_):
        raise NotPackable(f"images: expected uint8 or bool pixels, got {images.dtype}")
    if images.dtype == np.uint8 and images.size and images.max() > 1:
        raise NotPackable(f"images: expected binary pixels (0/1), found the value {int(images.max())}")
    flat = images.reshape(images.shape[0], IMAGE_SIDE * IMAGE_SIDE)
    return np.packbits(flat, axis=1, bitorder="little")


def build_table(dataset, chunk: int = BUILD_CHUNK, progress: Optional[Callable[[int, int], None]] = None,
                device=None) -> np.ndarray:
    """Pack every image of ``dataset`` (a GroundTruthDataset), row i = image of index i.

    Returns uint8 (len(dataset), 512). ``device``: where the factors go, so where a procedural
    data set renders (CPU by default; on a GPU the 737,280 dSprites render in seconds instead of
    minutes). ``progress(done, total)`` is called after each chunk.
    """
    total = len(dataset)
    table = np.empty((total, ROW_BYTES), dtype=np.uint8)
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        factors = dataset.factors_of_index(torch.arange(start, stop)).to(device or "cpu")
        table[start:stop] = pack_images(dataset.images(factors))
        if progress is not None:
            progress(stop, total)
    return table


# ---------------------------------------------------------------------------------------------
# The cache file
# ---------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """$XDG_CACHE_HOME/fastfvae, else ~/.cache/fastfvae (created on first write)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastfvae"


def cache_path(name: str, key: str, directory: Optional[os.PathLike] = None) -> Path:
    """The table file of data set ``name`` built from the source with hash ``key``."""
    folder = Path(directory) if directory is not None else cache_dir()
    return folder / f"{name}-v{FORMAT_VERSION}-{key[:16]}{SUFFIX}"


def _payload_digest(table: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(table)).cast("B")).hexdigest()


def write_table(path: Path, table: np.ndarray, key: str) -> None:
    """Write ``table`` (uint8 (rows, 512)) with its header, atomically (temporary file + rename)."""
    header = json.dumps({
        "format": FORMAT_VERSION, "key": key, "rows": int(table.shape[0]), "row_bytes": ROW_BYTES,
        "bitorder": "little", "sha256": _payload_digest(table),
    }).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + len(header).to_bytes(8, "little") + header)
            f.write(memoryview(np.ascontiguousarray(table)).cast("B"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def read_table(path: Path, key: str, rows: int) -> np.ndarray:
    """The table stored at ``path``; ValueError saying what is wrong when it is not the table of
    source ``key`` with ``rows`` rows and an intact payload; FileNotFoundError when missing."""
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise ValueError("not a fastfvae packed-image file (bad magic)")
        length = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"unreadable header ({error})") from None
        expected = {"format": FORMAT_VERSION, "key": key, "rows": rows, "row_bytes": ROW_BYTES, "bitorder": "little"}
        for name, value in expected.items():
            if header.get(name) != value:
                raise ValueError(f"header {name} is {header.get(name)!r}, expected {value!r}")
        table = np.fromfile(f, dtype=np.uint8, count=rows * ROW_BYTES)
    if table.size != rows * ROW_BYTES:
        raise ValueError(f"truncated: {table.size} payload bytes, expected {rows * ROW_BYTES}")
    table = table.reshape(rows, ROW_BYTES)
    if _payload_digest(table) != header.get("sha256"):
        raise ValueError("payload SHA-256 does not match the header (corrupt file)")
    return table


def load_or_build(name: str, key: str, rows: int, build: Callable[[], np.ndarray],
                  directory: Optional[os.PathLike] = None) -> np.ndarray:
    """The cached table of (name, key), or ``build()`` written to the cache when the file is
    missing or not valid (a warning says why an existing file was replaced)."""
    path = cache_path(name, key, directory)
    try:
        return read_table(path, key, rows)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        pass  # no readable file there: built below; a failed write then says why
    except (OSError, ValueError) as error:
        warnings.warn(f"rebuilding the packed image table {path}: {error}", stacklevel=3)
    table = build()
    if table.dtype != np.uint8 or table.shape != (rows, ROW_BYTES):
        raise ValueError(f"build() returned {table.dtype} {table.shape}, expected uint8 ({rows}, {ROW_BYTES})")
    try:
        write_table(path, table, key)
    except OSError as error:
        # An unwritable cache folder (read-only home, a file in the way, a full disk) must not
        # throw away a table that took minutes to build: use it from memory, say so once.
        reason = error.strerror or str(error)
        where = f"{error.filename}: " if error.filename else ""
        warnings.warn(f"could not write the packed image cache {path} ({where}{reason}); using the table "
                      f"from memory, it is built again next time (set XDG_CACHE_HOME to a writable folder "
                      f"to keep it)", stacklevel=3)
    return table
