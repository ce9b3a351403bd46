"""dSprites (Matthey et al. 2017): procedural on-demand renderer, or the official npz file.

Factors (classes, in the official order, the official file's constant colour column left out):

    shape        3   square, ellipse, heart
    scale        6   linspace(0.5, 1, 6)
    orientation 40   linspace(0, 2*pi, 40) radians (the last equals the first, as in the file)
    pos_x       32   linspace(0, 1, 32)
    pos_y       32   linspace(0, 1, 32)

so 3*6*40*32*32 = 737,280 images, and grid index = shape*245760 + scale*40960 + orientation*1024
+ pos_x*32 + pos_y, which is the official file's ``latents_classes @ [737280, 245760, 40960, 1024,
32, 1]`` (its colour class is always 0).

The procedural renderer is not DeepMind's generator (which is not public). Its geometry was
measured on real dSprites images (the official file; four of its images are in tests/data) and
the heart calibrated on them: a pixel (column i, row j; y points down) is on when its centre lies inside the shape,
whose centre is at (15.5 + 32*pos_x, 15.5 + 32*pos_y) and which is turned counter-clockwise on
screen by the orientation. In units of pixels at scale 1 (everything scales linearly):

    square   side 19.2
    ellipse  semi-axes 12.9 (horizontal at orientation 0) and 7.2
    heart    a square of side 11.8 turned 45 degrees (a diamond, tip down), centred on the
             position, plus two discs of radius 0.9 * 11.8 / 2 centred on the midpoints of its
             two upper edges: area ~228 * scale^2 (the real hearts measure ~227 * scale^2).

On the four shared real samples the renders reach a mean IoU of 0.98 (tests/test_data.py).
"""
from __future__ import annotations

import hashlib
import inspect
import math
import os
import zipfile
from typing import Optional

import numpy as np
import torch

from fastfvae.data import packed
from fastfvae.data.base import GroundTruthDataset

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPE_NAMES = ("square", "ellipse", "heart")
IMAGE_SIZE = 64

# Geometry at scale 1, in pixels (module docstring).
_ORIGIN = 15.5          # pixel coordinate of the centre at pos = 0
_TRAVEL = 32.0          # pos 0 -> 1 moves the centre by this many pixels
_SQUARE_SIDE = 19.2
_ELLIPSE_AXES = (12.9, 7.2)
_HEART_SIDE = 11.8
_HEART_LOBE_RATIO = 0.9  # lobe radius / (side / 2)
# Every shape fits in a 32x32 window starting 15 pixels left of/above floor(centre) (largest
# half-extent: the square's half-diagonal 13.6), and that window always lies inside the image.
_WINDOW = 32
_WINDOW_BEFORE = 15

# The official file: keys, the latents_classes column order and its colour column.
OFFICIAL_FILENAME = "dsprites_ndarray_co1sh3sc6or40x32x32_64x64.npz"
_OFFICIAL_COLUMNS = ("color",) + FACTOR_NAMES


def factor_values(device=None) -> tuple[torch.Tensor, ...]:
    """The latent values of each factor's classes (float32), in FACTOR_NAMES order."""
    return (
        torch.arange(3, dtype=torch.float32, device=device),
        torch.linspace(0.5, 1.0, 6, device=device),
        torch.linspace(0.0, 2 * math.pi, 40, device=device),
        torch.linspace(0.0, 1.0, 32, device=device),
        torch.linspace(0.0, 1.0, 32, device=device),
    )


def _inside(shape: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside test in the shape's own frame (u right, v up, pixels at scale 1)."""
    if shape == 0:
        half = _SQUARE_SIDE / 2
        return (u.abs() <= half) & (v.abs() <= half)
    if shape == 1:
        a, b = _ELLIPSE_AXES
        u, v = u * (1.0 / a), v * (1.0 / b)
        return u * u + v * v <= 1.0
    half_diag = _HEART_SIDE / math.sqrt(2)  # diamond: |u| + |v| <= half_diag
    lobe_r2 = (_HEART_LOBE_RATIO * _HEART_SIDE / 2) ** 2
    lobe_v = v - half_diag / 2               # lobe centres at (+-half_diag/2, half_diag/2)
    lobe_u = u.abs() - half_diag / 2         # mirror symmetry: one test covers both lobes
    return (u.abs() + v.abs() <= half_diag) | (lobe_u * lobe_u + lobe_v * lobe_v <= lobe_r2)


def render_dsprites(factors: torch.Tensor) -> torch.Tensor:
    """Render dSprites images from factor classes.

    factors: LongTensor (n, 5) of classes (shape, scale, orientation, pos_x, pos_y), on any device.
    Returns uint8 (n, 1, 64, 64) with values 0/1 on the factors' device. Deterministic: the same
    factors give the same bytes. All images of a batch are rendered with tensor operations, per
    shape, inside a 32x32 window around each centre.
    """
    device = factors.device
    n = factors.shape[0]
    out = torch.zeros((n, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, device=device)
    if n == 0:
        return out.unsqueeze(1)
    _, scales, angles, xs, ys = factor_values(device)
    scale = scales[factors[:, 1]]
    angle = angles[factors[:, 2]]
    cx = _ORIGIN + _TRAVEL * xs[factors[:, 3]]
    cy = _ORIGIN + _TRAVEL * ys[factors[:, 4]]
    start_x = cx.floor().long() - _WINDOW_BEFORE                       # (n,)
    start_y = cy.floor().long() - _WINDOW_BEFORE
    offsets = torch.arange(_WINDOW, device=device)
    px = (start_x[:, None] + offsets).float() - cx[:, None]          # (n, W) pixel x - centre
    py = (start_y[:, None] + offsets).float() - cy[:, None]          # (n, W) pixel y - centre (down)
    cos, sin = angle.cos(), angle.sin()
    # Undo the counter-clockwise turn: with v = -y (up), the shape frame is
    # u' = cos*u + sin*v, v' = -sin*u + cos*v; divide by the scale to get scale-1 pixels.
    inv = 1.0 / scale
    window = torch.zeros((n, _WINDOW, _WINDOW), dtype=torch.bool, device=device)
    for shape in range(3):
        rows = (factors[:, 0] == shape).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        c = (cos[rows] * inv[rows])[:, None, None]
        s = (sin[rows] * inv[rows])[:, None, None]
        u = px[rows][:, None, :]   # (m, 1, W): varies along columns
        y = py[rows][:, :, None]   # (m, W, 1): varies along rows; v = -y
        window[rows] = _inside(shape, c * u - s * y, -(c * y + s * u))
    rows_idx = (start_y[:, None] + offsets)[:, :, None]                 # (n, W, 1)
    cols_idx = (start_x[:, None] + offsets)[:, None, :]                 # (n, 1, W)
    batch_idx = torch.arange(n, device=device)[:, None, None]
    out[batch_idx, rows_idx, cols_idx] = window.to(torch.uint8)
    return out.unsqueeze(1)


# ---------------------------------------------------------------------------------------------
# The official npz
# ---------------------------------------------------------------------------------------------
def _npz_member(path: str, archive: zipfile.ZipFile, key: str) -> np.ndarray:
    """Array ``key`` of an npz: memory-mapped when stored uncompressed, else read into memory
    in its own dtype (uint8 images stay uint8: ~3 GB for the official file, never a float copy)."""
    info = archive.getinfo(key + ".npy")
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            if local[:4] != b"PK\x03\x04":
                raise ValueError("bad local zip header")
            name_len = int.from_bytes(local[26:28], "little")
            extra_len = int.from_bytes(local[28:30], "little")
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
        if dtype.hasobject:
            raise ValueError(f"{key} holds Python objects")
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                         order="F" if fortran else "C")
    with archive.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def load_official_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(imgs uint8 (N, 64, 64), latents_classes int64 (N, 6)) from the official dSprites npz,
    checked. Raises FileNotFoundError / ValueError naming the file and what is wrong."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"dSprites file {path!r} does not exist (expected the official {OFFICIAL_FILENAME}; "
            f"omit --data to use the procedural renderer)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            keys = {name[:-4] for name in archive.namelist() if name.endswith(".npy")}
            missing = [k for k in ("imgs", "latents_classes") if k not in keys]
            if missing:
                raise ValueError(f"lacks key(s) {missing} (it has {sorted(keys)})")
            imgs = _npz_member(path, archive, "imgs")
            classes = np.asarray(_npz_member(path, archive, "latents_classes"))
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, ValueError) as error:
        raise ValueError(f"dSprites file {path!r} is not a readable dSprites npz: {error}") from None
    if imgs.dtype != np.uint8 or imgs.ndim != 3 or imgs.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"dSprites file {path!r}: 'imgs' must be uint8 of shape (N, 64, 64), "
            f"got {imgs.dtype} {imgs.shape}"
        )
    if classes.ndim != 2 or classes.shape != (imgs.shape[0], len(_OFFICIAL_COLUMNS)) \
            or not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(
            f"dSprites file {path!r}: 'latents_classes' must be integer of shape "
            f"({imgs.shape[0]}, 6) (columns {_OFFICIAL_COLUMNS}), got {classes.dtype} {classes.shape}"
        )
    _check_binary(path, imgs)
    return imgs, np.array(classes, dtype=np.int64)  # a small writable copy (35 MB for the full file)


def _check_binary(path: str, imgs: np.ndarray, chunk: int = 65536) -> None:
    """Refuse pixel values above 1 (e.g. a file stored as 0/255): the Bernoulli reconstruction
    loss needs targets in [0, 1] (and goes to -1e7 otherwise). Checked once here, in chunks (the
    official file is 3 GB, maybe memory-mapped), so training never pays a per-step check."""
    for start in range(0, imgs.shape[0], chunk):
        top = int(imgs[start:start + chunk].max())
        if top > 1:
            raise ValueError(
                f"dSprites file {path!r}: 'imgs' must hold 0/1 pixels (Bernoulli targets), found the "
                f"value {top} in images {start}..{min(start + chunk, imgs.shape[0]) - 1}; divide a 0/255 "
                f"file by 255 and store it as uint8 0/1"
            )


class DSprites(GroundTruthDataset):
    """dSprites with the interface of ``fastfvae.data`` (1 channel, uint8 0/1 images).

    DSprites(): procedural, no download, renders on demand (module docstring for the geometry).
    DSprites(path=...): the official ``dsprites_ndarray_co1sh3sc6or40x32x32_64x64.npz``. Its
    ``imgs`` stay uint8 (memory-mapped if the archive stores them uncompressed, else decompressed
    once into memory, ~3 GB); factors come from ``latents_classes``. Its colour column is constant
    (one class) and is dropped, so both forms expose the same 5 factors. A reduced grid (fewer
    classes per factor, still complete) is accepted; the file's rows may be in any order.
    """

    factor_names = FACTOR_NAMES

    def __init__(self, path: Optional[str] = None):
        self.path = None if path is None else os.fspath(path)
        self.factor_sizes = FACTOR_SIZES
        self._imgs = None
        self._row_of_index = None
        if self.path is not None:
            self._load(self.path)

    def _load(self, path: str) -> None:
        imgs, classes = load_official_npz(path)
        if classes.shape[0] == 0:
            raise ValueError(f"dSprites file {path!r} holds no images")
        if classes.min() < 0 or np.any(classes[:, 0] != 0):
            raise ValueError(
                f"dSprites file {path!r}: 'latents_classes' must be non-negative with a constant "
                f"colour column (class 0); coloured variants are not supported"
            )
        sizes = tuple(int(s) for s in classes[:, 1:].max(axis=0) + 1)
        if math.prod(sizes) != classes.shape[0]:
            raise ValueError(
                f"dSprites file {path!r}: {classes.shape[0]} images do not form a full grid of "
                f"factor sizes {dict(zip(FACTOR_NAMES, sizes))}"
            )
        self.factor_sizes = sizes
        index = self.index_of_factors(torch.from_numpy(classes[:, 1:])).numpy()
        if not np.array_equal(index, np.arange(len(index))):
            counts = np.bincount(index, minlength=len(index))
            if np.any(counts != 1):
                raise ValueError(f"dSprites file {path!r}: 'latents_classes' repeats factor combinations")
            self._row_of_index = torch.from_numpy(np.argsort(index))
        self._imgs = imgs

    @property
    def procedural(self) -> bool:
        return self._imgs is None

    def images(self, factors: torch.Tensor) -> torch.Tensor:
        """factors LongTensor (n, 5) -> uint8 (n, 1, 64, 64) on the factors' device."""
        factors = self.check_factors(factors)
        if self._imgs is None:
            return render_dsprites(factors)
        rows = self.index_of_factors(factors.cpu())
        if self._row_of_index is not None:
            rows = self._row_of_index[rows]
        picked = self._imgs[rows.numpy()]
        return torch.from_numpy(np.ascontiguousarray(picked)).unsqueeze(1).to(factors.device)

    def packed_images(self, device=None, *, cache_dir=None) -> torch.Tensor:
        """Every image bit-packed: uint8 (len(self), 512) on ``device`` (default CPU), row i the
        image of index i (``factors_of_index`` order), bit order "little" (pixel 64*row + col is
        bit p % 8 of byte p // 8). Built once and cached on disk (fastfvae/data/packed.py: where,
        and when it is rebuilt); unpack a batch with ``fastfvae.gather_images``."""
        return dsprites_packed_images(self, device, cache_dir)

    def __repr__(self) -> str:
        source = "procedural" if self._imgs is None else repr(self.path)
        return f"DSprites({source}, factor_sizes={self.factor_sizes})"


# ---------------------------------------------------------------------------------------------
# The packed table's source key and builder (the cache itself: fastfvae/data/packed.py)
# ---------------------------------------------------------------------------------------------
def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# The renderer's constants: a change to any of them is a new table.
_DSPRITES_GEOMETRY = ("_ORIGIN", "_TRAVEL", "_SQUARE_SIDE", "_ELLIPSE_AXES", "_HEART_SIDE", "_HEART_LOBE_RATIO",
                      "_WINDOW", "_WINDOW_BEFORE")


def render_device(dataset, device) -> torch.device:
    """Where a DSprites table is rendered: on the GPU when the table is wanted there (seconds
    instead of the CPU's minutes), else on the CPU; a file-backed set is not rendered (CPU)."""
    device = torch.device(device if device is not None else "cpu")
    return device if dataset.procedural and device.type == "cuda" else torch.device("cpu")


def dsprites_source_key(dataset, render_on: torch.device = torch.device("cpu")) -> str:
    """A hash of what a DSprites table is built from: the renderer's code and geometry and the
    device type it renders on (a GPU's sin/cos may round a boundary pixel differently) for the
    procedural set, the npz's bytes for a file; with the factor sizes either way."""
    digest = hashlib.sha256(repr(tuple(dataset.factor_sizes)).encode())
    if dataset.procedural:
        digest.update(f"rendered on {render_on.type}".encode())
        for function in (render_dsprites, _inside, factor_values):
            digest.update(inspect.getsource(function).encode())
        geometry = {name: globals()[name] for name in _DSPRITES_GEOMETRY}
        digest.update(repr(sorted(geometry.items())).encode())
    else:
        digest.update(b"npz:" + _file_digest(dataset.path).encode())
    return digest.hexdigest()


def dsprites_packed_images(dataset, device=None, directory: Optional[os.PathLike] = None) -> torch.Tensor:
    """uint8 (len(dataset), 512) on ``device`` (default CPU): row i = packed image of index i."""
    render_on = render_device(dataset, device)
    key = dsprites_source_key(dataset, render_on)
    name = "dsprites-procedural" if dataset.procedural else "dsprites-npz"
    table = packed.load_or_build(name, key, len(dataset), lambda: packed.build_table(dataset, device=render_on), directory)
    return torch.from_numpy(table).to(device if device is not None else "cpu")
