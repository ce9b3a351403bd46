"""Cars3D (Reed et al. 2015, "Deep Visual Analogy-Making") from the official ``.mat`` files
(http://www.scottreed.info/, nips2015-analogy-data.tar.gz, folder ``data/cars``), read with
scipy.io, as disentanglement_lib uses them.

The folder holds one ``car_XXX_mesh.mat`` per car (183), each with ``im`` uint8
(128, 128, 3, 24, 4): height, width, RGB, azimuth, elevation. Factors, in disentanglement_lib's
order: elevation 4, azimuth 24, object_type 183 (the car: the rank of its file name among the
folder's ``.mat`` files, sorted -- disentanglement_lib takes the folder's listing order, which
the file system decides), grid index row-major (object_type fastest). Every image is resized to
64x64 with Pillow's Lanczos filter (disentanglement_lib's ``thumbnail((64, 64))`` with
ANTIALIAS, which for these square images is that resize) and kept as uint8 (value / 255 in
``images``). The 17,568 resized images are built once at load (the source is ~860 MB).
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import numpy as np

from fastfvae.data.table import IMAGE_SIZE, TableDataset, check_grid_sizes, file_error
from fastfvae.data.table_cache import cached_table, source_key

FACTOR_NAMES = ("elevation", "azimuth", "object_type")
FACTOR_SIZES = (4, 24, 183)
SOURCE = "http://www.scottreed.info/ (nips2015-analogy-data.tar.gz, folder data/cars)"


def resize_rgb(images: np.ndarray) -> np.ndarray:
    """uint8 (n, H, W, 3) -> uint8 (n, 64, 64, 3), Pillow's Lanczos filter."""
    from PIL import Image

    out = np.empty((len(images), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(
            (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS))
    return out


class Cars3D(TableDataset):
    """Cars3D: 17,568 colour images, 3 factors (module docstring).

    Cars3D(path): ``path`` the folder of the official ``car_*_mesh.mat`` files. ``factor_sizes``:
    the grid (elevation, azimuth, cars) the files must form (default (4, 24, 183)); the tests'
    small folders name theirs.
    """

    name = "cars3d"
    factor_names = FACTOR_NAMES
    channels = 3

    def __init__(self, path, *, factor_sizes: Optional[Sequence[int]] = None, seed: int = 0):
        try:
            import scipy.io
        except ImportError:
            raise ImportError("cars3d: reading the .mat files needs scipy: pip install scipy") from None
        self.seed = seed
        elevations, azimuths, cars = sizes = check_grid_sizes(self.name, factor_sizes, FACTOR_SIZES)
        self.path = os.fspath(path)
        expected = f"a folder of {cars} official car_*_mesh.mat files (each 'im' uint8 (128, 128, 3, 24, 4))"
        if not os.path.isdir(self.path):
            raise file_error(self.name, self.path, "the folder does not exist", expected, SOURCE)
        files = sorted(name for name in os.listdir(self.path) if name.endswith(".mat"))
        if len(files) != cars:
            raise file_error(self.name, self.path, f"the folder holds {len(files)} .mat files", expected, SOURCE)
        self._set_grid(sizes)
        sources = [os.path.join(self.path, name) for name in files]
        key = source_key(self.name, sizes, sources, "Lanczos 64x64")
        self._rows = cached_table(self.name, key, (math.prod(sizes), IMAGE_SIZE, IMAGE_SIZE, 3),
                                  lambda: self._build(sources, expected, scipy.io))

    def _build(self, sources: list, expected: str, scipy_io) -> np.ndarray:
        """Every car's views resized, uint8 (N, 64, 64, 3) in grid order."""
        elevations, azimuths, cars = self.grid_sizes
        table = np.empty((elevations, azimuths, cars, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        for car, where in enumerate(sources):
            try:
                im = scipy_io.loadmat(where)["im"]
            except KeyError:
                raise file_error(self.name, where, "the file has no 'im' array", expected, SOURCE) from None
            except (OSError, ValueError, TypeError, scipy_io.matlab.MatReadError) as damaged:
                raise file_error(self.name, where, f"not a readable .mat file ({damaged})", expected, SOURCE) from None
            if im.dtype != np.uint8 or im.ndim != 5 or im.shape[2:] != (3, azimuths, elevations):
                raise file_error(self.name, where, f"'im' is {im.dtype} {im.shape}, expected uint8 "
                                 f"(H, W, 3, {azimuths}, {elevations})", expected, SOURCE)
            # (H, W, 3, azimuth, elevation) -> (elevation, azimuth, H, W, 3)
            views = np.transpose(im, (4, 3, 0, 1, 2)).reshape((-1,) + im.shape[:3])
            table[:, :, car] = resize_rgb(views).reshape(elevations, azimuths, IMAGE_SIZE, IMAGE_SIZE, 3)
        return table.reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 3)
