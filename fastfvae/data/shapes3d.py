"""3D Shapes (Burgess & Kim 2018; the FactorVAE paper's second data set) from the official
``3dshapes.h5`` (https://github.com/deepmind/3d-shapes), read with h5py.

The file holds ``images`` uint8 (480000, 64, 64, 3) and ``labels`` float64 (480000, 6), the
factor values of each image. Factors, in disentanglement_lib's order (which is the file's):

    floor_hue 10, wall_hue 10, object_hue 10, scale 8, shape 4, orientation 15

and the file's rows are the row-major grid of these sizes (orientation fastest), so grid index
= row, as disentanglement_lib's ``factor_bases``. The loader checks this: each label column must
take exactly its factor's number of distinct values, and the class of every row (the rank of its
value) must give back the row's own index. Images stay in the file (h5py reads a batch's rows);
``image_table`` reads them all for the training device.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import torch

from fastfvae.data.table import IMAGE_SIZE, TableDataset, check_grid_sizes, file_error
from fastfvae.data.table_cache import cached_table, source_key, table_path

FACTOR_NAMES = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
FACTOR_SIZES = (10, 10, 10, 8, 4, 15)
OFFICIAL_FILENAME = "3dshapes.h5"
SOURCE = "https://github.com/deepmind/3d-shapes (https://storage.googleapis.com/3d-shapes/3dshapes.h5)"


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("shapes3d: reading 3dshapes.h5 needs h5py: pip install 'fastfvae[data]' "
                          "(or pip install h5py)") from None
    return h5py


def label_classes(labels: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """Factor values (N, K) -> (classes int64 (N, K), sizes): class = rank of the value among the
    column's distinct values."""
    classes = np.empty(labels.shape, dtype=np.int64)
    sizes = []
    for k in range(labels.shape[1]):
        values, classes[:, k] = np.unique(labels[:, k], return_inverse=True)
        sizes.append(len(values))
    return classes, tuple(sizes)


class Shapes3D(TableDataset):
    """3D Shapes: 480,000 colour images, 6 factors (module docstring).

    Shapes3D(path): ``path`` is the official ``3dshapes.h5`` (or a folder holding it).
    ``factor_sizes``: the grid the file must form (default the official one); a smaller
    complete grid is accepted only when named here (the tests' small files use it).
    """

    name = "shapes3d"
    factor_names = FACTOR_NAMES
    channels = 3

    def __init__(self, path, *, factor_sizes: Optional[Sequence[int]] = None, seed: int = 0):
        self.seed = seed
        sizes = check_grid_sizes(self.name, factor_sizes, FACTOR_SIZES)
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, OFFICIAL_FILENAME)
        self.path = path
        expected = f"the official {OFFICIAL_FILENAME} (images uint8 (480000, 64, 64, 3), labels (480000, 6))"

        def error(problem):
            return file_error(self.name, path, problem, expected, SOURCE)

        if not os.path.isfile(path):
            raise error("the file does not exist")
        h5py = _h5py()
        try:
            self._file = h5py.File(path, "r")
            images, labels = self._file["images"], self._file["labels"]
            n = int(np.prod(sizes))
            if images.dtype != np.uint8 or images.shape != (n, IMAGE_SIZE, IMAGE_SIZE, 3):
                raise error(f"'images' is {images.dtype} {images.shape}, expected uint8 {(n, 64, 64, 3)}")
            if labels.shape != (n, len(sizes)):
                raise error(f"'labels' has shape {labels.shape}, expected {(n, len(sizes))}")
            classes, found = label_classes(np.asarray(labels[:]))
        except KeyError as missing:
            raise error(f"the file lacks the dataset {missing}") from None
        except OSError as damaged:  # not HDF5, truncated, or unreadable
            raise error(f"the file is not a readable HDF5 file ({damaged})") from None
        if found != sizes:
            raise error(f"the label columns take {found} distinct values, expected {sizes}")
        self._set_grid(sizes)
        index = self.grid_index(torch.from_numpy(classes)).numpy()
        if not np.array_equal(index, np.arange(len(index))):
            raise error("the rows are not the row-major factor grid (orientation fastest)")
        self._rows = images
        self._cache_key = source_key(self.name, sizes, [path], "h5 images")
        if table_path(self.name, self._cache_key).exists():
            self.image_table()  # a table decoded before: read the memory-mapped cache from now on

    def image_table(self, device=None, chunk: int = 8192):
        """Every image, uint8 (N, 3, 64, 64) (see TableDataset.image_table). The first call
        decodes the h5 file into the table cache (fastfvae/data/table_cache.py); later lookups
        (``images``, this) read the memory-mapped cache instead of the compressed file."""
        if not isinstance(self._rows, np.ndarray):
            shape = (len(self), IMAGE_SIZE, IMAGE_SIZE, 3)
            try:
                self._rows = cached_table(self.name, self._cache_key, shape, lambda: self._decode(chunk))
            except OSError as damaged:
                raise file_error(self.name, self.path, f"the images cannot be read ({damaged})",
                                 f"the official {OFFICIAL_FILENAME}", SOURCE) from None
        return super().image_table(device, chunk)

    def _decode(self, chunk: int) -> np.ndarray:
        table = np.empty((len(self), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        for start in range(0, len(self), chunk):
            table[start:start + chunk] = self._rows[start:start + chunk]
        return table
