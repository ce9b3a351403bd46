"""SmallNORB (LeCun et al. 2004) from the official binary matrix files
(https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/, gunzipped), as disentanglement_lib uses it.

The folder holds, for chunk in (``5x46789x9x18x6x2x96x96-training``, ``5x01235x9x18x6x2x96x96-testing``),
``smallnorb-<chunk>-dat.mat`` (uint8 (24300, 2, 96, 96): a stereo pair per row), ``-cat.mat``
(int32 (24300,): category) and ``-info.mat`` (int32 (24300, 4): instance, elevation, azimuth
0, 2, ..., 34, lighting). Binary matrix format (all little-endian): int32 magic (the element
type: 0x1E3D4C55 bytes, 0x1E3D4C54 int32, 0x1E3D4C51 float32, 0x1E3D4C53 float64, 0x1E3D4C56
int16), int32 ndim, max(3, ndim) int32 dimensions (the first ndim are the shape), then the
elements in C order. A file whose length differs from what its header declares is refused.

disentanglement_lib's choices, kept: both chunks (48,600 rows), the first camera only, every
image resized to 64x64 with Pillow's Lanczos filter (its ANTIALIAS) in 32-bit integer mode (as
``Image.fromarray`` of its int8 array gives) -- the few overshoots outside 0..255 are clipped
here (they are targets of a Bernoulli loss) -- one channel, value / 255. Grid (5, 10, 9, 18, 6)
= (category, instance, elevation, azimuth / 2, lighting); the instance is not a factor: the
factors are category 5, elevation 9, azimuth 18, lighting 6 and each observation draws its
instance uniformly (``nuisance_generator``, seeded by ``seed``).
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import numpy as np
import torch

from fastfvae.data.table import IMAGE_SIZE, TableDataset, check_grid_sizes, file_error
from fastfvae.data.table_cache import cached_table, source_key

FACTOR_NAMES = ("category", "elevation", "azimuth", "lighting")
GRID_NAMES = ("category", "instance", "elevation", "azimuth", "lighting")
GRID_SIZES = (5, 10, 9, 18, 6)
LATENT = (0, 2, 3, 4)
CHUNKS = ("5x46789x9x18x6x2x96x96-training", "5x01235x9x18x6x2x96x96-testing")
SOURCE = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/ (gunzip the six smallnorb-*.mat.gz files)"
MAGIC_DTYPES = {0x1E3D4C55: np.uint8, 0x1E3D4C54: np.int32, 0x1E3D4C51: np.float32,
                0x1E3D4C53: np.float64, 0x1E3D4C56: np.int16}


def file_name(chunk: str, kind: str) -> str:
    return f"smallnorb-{chunk}-{kind}.mat"


def read_binary_matrix(path: str) -> np.ndarray:
    """The array of a NORB binary matrix file, memory-mapped (read-only). ValueError when the
    magic is unknown or the file's length is not the header's promise (truncated, padded)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{size} bytes, shorter than the header")
        magic, ndim = (int(v) for v in np.frombuffer(head, "<i4"))
        if magic not in MAGIC_DTYPES:
            raise ValueError(f"unknown magic number {magic:#x}")
        if not 1 <= ndim <= 16:
            raise ValueError(f"bad number of dimensions {ndim}")
        raw = f.read(4 * max(3, ndim))
        if len(raw) < 4 * max(3, ndim):
            raise ValueError(f"{size} bytes, shorter than the header")
        shape = tuple(int(v) for v in np.frombuffer(raw, "<i4")[:ndim])
    offset = 8 + 4 * max(3, ndim)
    dtype = np.dtype(MAGIC_DTYPES[magic]).newbyteorder("<")
    if any(s < 0 for s in shape) or size != offset + math.prod(shape) * dtype.itemsize:
        raise ValueError(f"{size} bytes, but its header declares {dtype} {shape} "
                         f"({offset + math.prod(shape) * dtype.itemsize} bytes): truncated or damaged")
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def write_binary_matrix(path: str, array: np.ndarray) -> None:
    """Write ``array`` in the NORB binary matrix format (the tests' fixtures use it)."""
    dtype = np.dtype(array.dtype)
    magic = {np.dtype(v): k for k, v in MAGIC_DTYPES.items()}[dtype]
    dims = list(array.shape) + [1] * max(0, 3 - array.ndim)
    with open(path, "wb") as f:
        f.write(np.array([magic, array.ndim] + dims, "<i4").tobytes())
        f.write(np.ascontiguousarray(array, dtype.newbyteorder("<")).tobytes())


def resize_norb(images: np.ndarray) -> np.ndarray:
    """uint8 (n, H, W) -> uint8 (n, 64, 64): Lanczos in Pillow's 32-bit integer mode, clipped."""
    from PIL import Image

    out = np.empty((len(images), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i, image in enumerate(images):
        big = Image.fromarray(np.asarray(image, dtype=np.int32))  # mode "I"
        small = np.asarray(big.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS))
        out[i] = np.clip(small, 0, 255)
    return out


class SmallNORB(TableDataset):
    """SmallNORB: 48,600 grey images, 4 factors and a nuisance instance (module docstring).

    SmallNORB(path): ``path`` the folder holding the six official files. ``factor_sizes``: the
    full grid (category, instance, elevation, azimuth, lighting) the files must form (default
    (5, 10, 9, 18, 6)); the tests' small files name theirs. ``seed``: the instance draws.
    """

    name = "smallnorb"
    factor_names = FACTOR_NAMES
    channels = 1

    def __init__(self, path, *, factor_sizes: Optional[Sequence[int]] = None, seed: int = 0):
        self.seed = seed
        sizes = check_grid_sizes(self.name, factor_sizes, GRID_SIZES)
        self.path = os.fspath(path)
        expected = (f"a folder with the six official files {file_name(CHUNKS[0], 'dat')} ... "
                    f"{file_name(CHUNKS[1], 'info')}")
        if not os.path.isdir(self.path):
            raise file_error(self.name, self.path, "the folder does not exist", expected, SOURCE)
        images, features, sources = [], [], []
        for chunk in CHUNKS:
            dat, cat, info = (self._matrix(file_name(chunk, kind), expected) for kind in ("dat", "cat", "info"))
            n = dat.shape[0]
            where = os.path.join(self.path, file_name(chunk, "dat"))
            if dat.dtype != np.uint8 or dat.ndim != 4 or dat.shape[1] != 2:
                raise file_error(self.name, where, f"holds {dat.dtype} {dat.shape}, expected uint8 (N, 2, H, W)",
                                 expected, SOURCE)
            if cat.shape != (n,) or info.shape != (n, 4) or cat.dtype != np.int32 or info.dtype != np.int32:
                raise file_error(self.name, os.path.join(self.path, file_name(chunk, "info")),
                                 f"cat {cat.dtype} {cat.shape} / info {info.dtype} {info.shape} do not match "
                                 f"{n} images (expected int32 ({n},) and ({n}, 4))", expected, SOURCE)
            feature = np.column_stack((cat, info)).astype(np.int64)
            feature[:, 3] //= 2  # azimuth values are 0, 2, ..., 34
            images.append(dat[:, 0])
            features.append(feature)
            sources += [os.path.join(self.path, file_name(chunk, kind)) for kind in ("dat", "cat", "info")]
        features = np.concatenate(features)
        self._set_grid(sizes, LATENT)
        row_of_grid = self._row_of_grid(features, expected)
        key = source_key(self.name, sizes, sources, "first camera, Lanczos 64x64 in mode I, clipped")
        self._rows = cached_table(self.name, key, (len(features), IMAGE_SIZE, IMAGE_SIZE, 1),
                                  lambda: np.concatenate([resize_norb(part) for part in images])[row_of_grid][..., None])

    def _matrix(self, name: str, expected: str) -> np.ndarray:
        where = os.path.join(self.path, name)
        if not os.path.isfile(where):
            raise file_error(self.name, where, "the file does not exist", expected, SOURCE)
        try:
            return read_binary_matrix(where)
        except (OSError, ValueError) as damaged:
            raise file_error(self.name, where, f"not a readable NORB binary matrix: {damaged}",
                             expected, SOURCE) from None

    def _row_of_grid(self, features: np.ndarray, expected: str) -> np.ndarray:
        """The file row (both chunks concatenated) of each grid index; the features must cover
        the grid exactly once (as disentanglement_lib's StateSpaceAtomIndex demands)."""
        total = math.prod(self.grid_sizes)
        bad = (features < 0) | (features >= np.array(self.grid_sizes))
        if features.shape[0] != total or bad.any():
            raise file_error(self.name, self.path, f"the labels ({features.shape[0]} rows) do not form the "
                             f"grid {dict(zip(GRID_NAMES, self.grid_sizes))}", expected, SOURCE)
        index = self.grid_index(torch.from_numpy(features)).numpy()
        if np.unique(index).size != total:
            raise file_error(self.name, self.path, "the labels repeat a factor combination", expected, SOURCE)
        row_of_grid = np.empty(total, dtype=np.int64)
        row_of_grid[index] = np.arange(total)
        return row_of_grid
