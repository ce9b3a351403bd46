"""Small files in each official format (the real ones are hundreds of MB to GB): the layout,
keys, dtypes and factor order of the official files, over a small complete factor grid that the
tests name to the loader (its ``factor_sizes`` option). Each builder returns (path, sizes, the
source images it wrote, in the order the file stores them)."""
from __future__ import annotations

import math
import os

import numpy as np

SHAPES3D_SIZES = (2, 2, 2, 2, 2, 3)
MPI3D_SIZES = (2, 2, 1, 1, 1, 2, 3)
NORB_SIZES = (2, 2, 2, 3, 2)          # category, instance, elevation, azimuth / 2, lighting
CARS_SIZES = (2, 3, 2)                # elevation, azimuth, cars
NORB_CHUNKS = ("5x46789x9x18x6x2x96x96-training", "5x01235x9x18x6x2x96x96-testing")


def grid(sizes) -> np.ndarray:
    """Every factor combination (prod(sizes), K), row-major (last fastest)."""
    return np.stack(np.unravel_index(np.arange(math.prod(sizes)), sizes), axis=1)


def shapes3d_file(folder, sizes=SHAPES3D_SIZES, seed=0, shape=None):
    import h5py

    rng = np.random.default_rng(seed)
    n = math.prod(sizes)
    images = rng.integers(0, 256, size=shape or (n, 64, 64, 3), dtype=np.uint8)
    # labels are factor VALUES (floats), as in the official file: hues in [0, 1), scales
    # 0.75..1.25, shapes 0..3, orientations -30..30
    values = [np.linspace(0, 0.9, s) if k < 3 else np.linspace(-30, 30, s) for k, s in enumerate(sizes)]
    labels = np.stack([values[k][column] for k, column in enumerate(grid(sizes).T)], axis=1)
    path = os.path.join(folder, "3dshapes.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images)
        f.create_dataset("labels", data=labels)
    return path, sizes, images, labels


def mpi3d_file(folder, variant="mpi3d_toy", sizes=MPI3D_SIZES, seed=0, compressed=False):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(math.prod(sizes), 64, 64, 3), dtype=np.uint8)
    path = os.path.join(folder, f"{variant}.npz")
    (np.savez_compressed if compressed else np.savez)(path, images=images)
    return path, sizes, images


def norb_files(folder, sizes=NORB_SIZES, seed=0, side=96):
    """Two chunks, the instances split between them as in the official files (training and
    testing hold different instances); rows shuffled within each chunk."""
    from fastfvae.data.smallnorb import write_binary_matrix

    rng = np.random.default_rng(seed)
    features = grid(sizes)
    images = rng.integers(0, 256, size=(len(features), 2, side, side), dtype=np.uint8)
    in_training = features[:, 1] % 2 == 0
    parts = []
    for chunk, rows in zip(NORB_CHUNKS, (np.flatnonzero(in_training), np.flatnonzero(~in_training))):
        rows = rng.permutation(rows)
        info = features[rows][:, 1:].copy()
        info[:, 2] *= 2  # azimuth stored as 0, 2, 4, ...
        write_binary_matrix(os.path.join(folder, f"smallnorb-{chunk}-dat.mat"), images[rows])
        write_binary_matrix(os.path.join(folder, f"smallnorb-{chunk}-cat.mat"), features[rows, 0].astype(np.int32))
        write_binary_matrix(os.path.join(folder, f"smallnorb-{chunk}-info.mat"), info.astype(np.int32))
        parts.append(rows)
    return folder, sizes, images, features, parts


def cars_files(folder, sizes=CARS_SIZES, seed=0, side=16):
    """One car_XXX_mesh.mat per car with 'im' uint8 (side, side, 3, azimuths, elevations)."""
    import scipy.io

    rng = np.random.default_rng(seed)
    elevations, azimuths, cars = sizes
    meshes = []
    for car in range(cars):
        im = rng.integers(0, 256, size=(side, side, 3, azimuths, elevations), dtype=np.uint8)
        scipy.io.savemat(os.path.join(folder, f"car_{car + 1:03d}_mesh.mat"), {"im": im})
        meshes.append(im)
    return folder, sizes, meshes
