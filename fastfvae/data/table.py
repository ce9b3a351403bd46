"""Data sets stored as a table of images, one row per point of a factor grid (Shapes3D, MPI3D,
SmallNORB, Cars3D): the shared lookup, the file errors and the uint8 device table.

A table data set has a full grid of ``grid_sizes`` (row-major, last factor fastest, as
disentanglement_lib's ``factor_bases``) whose row i is the image of grid index i. Most sets
expose every grid factor; SmallNORB hides one (the object instance, a nuisance drawn at random
for each observation, as disentanglement_lib's ``SplitDiscreteStateSpace``), so its
``factor_sizes`` are the grid's ``latent`` columns only.

Images are uint8 (64, 64, C) (or (64, 64) for one channel) in the source; ``images`` returns
float32 (n, C, 64, 64) in [0, 1] (value / 255, as disentanglement_lib), ``image_table`` the
whole set as uint8 (N, C, 64, 64) for the training device (``fastfvae.gather_color_images``
converts a batch there).
"""
from __future__ import annotations

import math
import operator
import os
from typing import Optional, Sequence

import numpy as np
import torch

from fastfvae.data.base import GroundTruthDataset, _integer_index

IMAGE_SIZE = 64


class DataFileError(ValueError):
    """A data set's file is missing, of the wrong kind, or damaged (the message names the file
    expected, the official source and the option that points at it)."""


def file_error(name: str, path, problem: str, expected: str, source: str) -> DataFileError:
    """One error for every file problem of data set ``name``: what is wrong, the file expected,
    where it comes from, and how to point at it."""
    return DataFileError(
        f"{name}: {problem} (path {os.fspath(path)!r}). Expected {expected}, from {source}; point at "
        f"it with --data PATH (fastfvae.data.load({name!r}, path=...))"
    )


def check_grid_sizes(name: str, sizes, official: Sequence[int]) -> tuple[int, ...]:
    """``sizes`` (None: ``official``) as a tuple of positive ints of the official length."""
    if sizes is None:
        return tuple(official)
    sizes = tuple(sizes)
    if len(sizes) != len(official) or not all(isinstance(s, int) and s >= 1 for s in sizes):
        raise ValueError(f"{name}: factor_sizes must be {len(official)} positive ints, got {sizes!r}")
    return sizes


class TableDataset(GroundTruthDataset):
    """Base of the file-backed sets: subclasses set ``name``, ``factor_names``, ``grid_sizes``,
    ``latent`` (grid columns exposed as factors, in order), ``channels`` and ``_rows`` (an
    array-like (N, 64, 64, C) or (N, 64, 64) uint8 indexed by grid index: a NumPy array, a
    memory map or an h5py dataset)."""

    name = "table"
    channels = 3
    grid_sizes: tuple[int, ...] = ()
    latent: tuple[int, ...] = ()
    _rows = None

    def _set_grid(self, grid_sizes: tuple[int, ...], latent: Optional[tuple[int, ...]] = None) -> None:
        self.grid_sizes = tuple(grid_sizes)
        self.latent = tuple(range(len(grid_sizes))) if latent is None else tuple(latent)
        self.factor_sizes = tuple(self.grid_sizes[k] for k in self.latent)
        # Nuisance grid columns (not factors) are drawn from this generator in ``images``;
        # ``seed`` (the constructor's option) fixes it.
        self.nuisance_generator = torch.Generator().manual_seed(getattr(self, "seed", 0))

    @property
    def num_channels(self) -> int:
        return self.channels

    @property
    def random_observations(self) -> bool:
        """A hidden grid column is drawn per observation (SmallNORB's instance): the metrics'
        encode-once code table does not apply."""
        return len(self.latent) < len(self.grid_sizes)

    def __len__(self) -> int:
        """Number of images (the full grid, nuisance columns included)."""
        return math.prod(self.grid_sizes)

    # -- grid <-> factors ----------------------------------------------------------------------
    def grid_index(self, grid: torch.Tensor) -> torch.Tensor:
        """Full-grid classes (n, len(grid_sizes)) -> grid indices (n,), row-major."""
        index = torch.zeros(grid.shape[:-1], dtype=torch.long, device=grid.device)
        for k, size in enumerate(self.grid_sizes):
            index = index * size + grid[..., k]
        return index

    def grid_of_index(self, index: torch.Tensor) -> torch.Tensor:
        """Grid indices (n,) -> full-grid classes (n, len(grid_sizes))."""
        index = torch.as_tensor(index, dtype=torch.long)
        out = []
        for size in reversed(self.grid_sizes):
            out.append(index % size)
            index = torch.div(index, size, rounding_mode="floor")
        return torch.stack(out[::-1], dim=-1)

    def complete_factors(self, factors: torch.Tensor) -> torch.Tensor:
        """Factors (n, K) -> full-grid classes, the nuisance columns drawn uniformly from
        ``nuisance_generator`` (as disentanglement_lib's ``sample_all_factors``)."""
        if len(self.latent) == len(self.grid_sizes):
            return factors
        grid = torch.empty((factors.shape[0], len(self.grid_sizes)), dtype=torch.long)
        grid[:, list(self.latent)] = factors.cpu()
        for k, size in enumerate(self.grid_sizes):
            if k not in self.latent:
                grid[:, k] = torch.randint(size, (factors.shape[0],), generator=self.nuisance_generator)
        return grid.to(factors.device)

    # -- images --------------------------------------------------------------------------------
    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """uint8 (n, 64, 64, C) of the given grid indices (any order, repeats allowed)."""
        if isinstance(self._rows, np.ndarray):  # an ndarray or a memory map: fancy indexing
            picked = self._rows[rows]
        else:  # h5py reads increasing, distinct indices only
            unique, inverse = np.unique(rows, return_inverse=True)
            picked = np.asarray(self._rows[unique])[inverse.reshape(-1)]
        return picked.reshape(len(rows), IMAGE_SIZE, IMAGE_SIZE, self.channels)

    def images(self, factors: torch.Tensor) -> torch.Tensor:
        """factors LongTensor (n, K) -> float32 (n, C, 64, 64) in [0, 1] on the factors' device."""
        factors = self.check_factors(factors)
        rows = self.grid_index(self.complete_factors(factors).cpu()).numpy()
        picked = torch.from_numpy(np.ascontiguousarray(self.read_rows(rows)))
        return picked.to(factors.device).permute(0, 3, 1, 2).float().div_(255.0)

    def __getitem__(self, i: int):
        """(image float32 (C, 64, 64), factors (K,)) of image ``i`` of the full grid."""
        n = len(self)
        index = operator.index(_integer_index(i))
        position = index + n if index < 0 else index
        if not 0 <= position < n:
            raise IndexError(f"index {index} out of range for a data set of {n} images (valid: {-n} to {n - 1})")
        picked = torch.from_numpy(np.ascontiguousarray(self.read_rows(np.array([position]))))
        grid = self.grid_of_index(torch.tensor([position]))[0]
        return picked[0].permute(2, 0, 1).float().div_(255.0), grid[list(self.latent)]

    def image_table(self, device=None, chunk: int = 8192) -> torch.Tensor:
        """Every image as uint8 (len(self), C, 64, 64) on ``device`` (default CPU), row i the
        image of grid index i. Allocated on ``device`` and filled ``chunk`` rows at a time, so a
        GPU table never passes through a whole host copy (MPI3D's is 12.7 GB)."""
        total = len(self)
        table = torch.empty((total, self.channels, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, device=device)
        for start in range(0, total, chunk):
            stop = min(start + chunk, total)
            part = torch.from_numpy(np.ascontiguousarray(self.read_rows(np.arange(start, stop))))
            table[start:stop] = part.to(table.device).permute(0, 3, 1, 2)
        return table

    def __repr__(self) -> str:
        return f"{type(self).__name__}({getattr(self, 'path', None)!r}, factor_sizes={self.factor_sizes})"
