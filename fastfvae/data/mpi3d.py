"""MPI3D (Gondal et al. 2019, the NeurIPS 2019 disentanglement challenge): toy, realistic and
real, from the official ``.npz`` files (https://github.com/rr-learning/disentanglement_dataset).

Each file holds ``images`` uint8 (1036800, 64, 64, 3), the row-major grid of the factors (in
disentanglement_lib's order, which is the file's; the last varies fastest):

    object_color 6, object_shape 6, object_size 2, camera_height 3, background_color 3,
    horizontal_axis 40, vertical_axis 40

disentanglement_lib hard-codes 4 colours and 4 shapes (460,800 images) for mpi3d_toy and
mpi3d_realistic, the sizes of their first release; the files published now have 6 and 6. The
loader takes the sizes from the number of images (1,036,800 -> 6, 6; 460,800 -> 4, 4) and refuses
any other count. The images are memory-mapped when the archive stores them uncompressed (the
official files do: ~12 GB each), else decompressed once into the table cache
(fastfvae/data/table_cache.py) and memory-mapped from there.
"""
from __future__ import annotations

import math
import os
import zipfile
from typing import Optional, Sequence

import numpy as np

from fastfvae.data.dsprites import _npz_member
from fastfvae.data.table import IMAGE_SIZE, DataFileError, TableDataset, check_grid_sizes, file_error
from fastfvae.data.table_cache import cached_table, source_key

FACTOR_NAMES = ("object_color", "object_shape", "object_size", "camera_height", "background_color",
                "horizontal_axis", "vertical_axis")
FACTOR_SIZES = (6, 6, 2, 3, 3, 40, 40)
FIRST_RELEASE_SIZES = (4, 4, 2, 3, 3, 40, 40)  # disentanglement_lib's for mpi3d_toy / mpi3d_realistic
VARIANTS = ("mpi3d_toy", "mpi3d_realistic", "mpi3d_real")
SOURCE = "https://github.com/rr-learning/disentanglement_dataset"


class MPI3D(TableDataset):
    """MPI3D: ``variant`` one of VARIANTS; ``path`` the official ``<variant>.npz`` (or a folder
    holding it). ``factor_sizes``: the grid the file must form (default: from its image count,
    module docstring); the tests' small files name theirs."""

    factor_names = FACTOR_NAMES
    channels = 3

    def __init__(self, path, variant: str = "mpi3d_toy", *, factor_sizes: Optional[Sequence[int]] = None,
                 seed: int = 0):
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
        self.name, self.seed = variant, seed
        filename = f"{variant}.npz"
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, filename)
        self.path = path
        expected = f"the official {filename} (images uint8 (1036800, 64, 64, 3))"

        def error(problem):
            return file_error(variant, path, problem, expected, SOURCE)

        if not os.path.isfile(path):
            raise error("the file does not exist")
        try:
            with zipfile.ZipFile(path) as archive:
                if "images.npy" not in archive.namelist():
                    raise error(f"the archive lacks 'images' (it has {archive.namelist()})")
                info = archive.getinfo("images.npy")
                if info.compress_type == zipfile.ZIP_STORED:  # the official files: memory-mapped
                    images = _npz_member(path, archive, "images")
                else:  # decompressed once into the table cache, memory-mapped from there
                    with archive.open(info) as member:
                        version = np.lib.format.read_magic(member)
                        shape, _, dtype = (np.lib.format.read_array_header_1_0(member) if version == (1, 0)
                                           else np.lib.format.read_array_header_2_0(member))
                    if dtype != np.uint8 or len(shape) != 4 or shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
                        raise error(f"'images' is {dtype} {shape}, expected uint8 (N, 64, 64, 3)")
                    key = source_key(variant, (), [path], "compressed npz images")
                    images = cached_table(variant, key, shape, lambda: _npz_member(path, archive, "images"))
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as damaged:
            if isinstance(damaged, DataFileError):
                raise
            raise error(f"the file is not a readable npz ({damaged})") from None
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise error(f"'images' is {images.dtype} {images.shape}, expected uint8 (N, 64, 64, 3)")
        n = images.shape[0]
        if factor_sizes is None:
            by_count = {math.prod(FACTOR_SIZES): FACTOR_SIZES, math.prod(FIRST_RELEASE_SIZES): FIRST_RELEASE_SIZES}
            if n not in by_count:
                raise error(f"'images' holds {n} images, expected {math.prod(FACTOR_SIZES)} "
                            f"(or {math.prod(FIRST_RELEASE_SIZES)} for the first release)")
            sizes = by_count[n]
        else:
            sizes = check_grid_sizes(variant, factor_sizes, FACTOR_SIZES)
            if n != math.prod(sizes):
                raise error(f"'images' holds {n} images, expected {math.prod(sizes)} for factor sizes {sizes}")
        self._set_grid(sizes)
        self._rows = images
