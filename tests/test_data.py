"""fastfvae.data: the procedural dSprites renderer against real images, the interface, the npz loader."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from fastfvae.data import DSprites, render_dsprites
from fastfvae.data.dsprites import FACTOR_SIZES

# Four real dSprites images (DeepMind, Apache-2.0; tests/data/README.md).
SAMPLES = os.path.join(os.path.dirname(__file__), "data", "dsprites_real_samples.npz")


def classes_from_values(values: np.ndarray) -> torch.Tensor:
    """latents_values (n, 6) of the official file -> our factor classes (n, 5)."""
    shape = values[:, 1].astype(int) - 1
    scale = np.rint((values[:, 2] - 0.5) / 0.1).astype(int)
    orientation = np.rint(values[:, 3] / (2 * np.pi) * 39).astype(int)
    pos_x = np.rint(values[:, 4] * 31).astype(int)
    pos_y = np.rint(values[:, 5] * 31).astype(int)
    return torch.tensor(np.stack([shape, scale, orientation, pos_x, pos_y], axis=1))


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    return float((a & b).sum()) / float((a | b).sum())


def test_renderer_matches_real_dsprites_samples():
    real = np.load(SAMPLES)
    factors = classes_from_values(real["latents_values"])
    rendered = DSprites().images(factors)[:, 0]
    scores = [iou(r, torch.from_numpy(t)) for r, t in zip(rendered, real["imgs"])]
    print("IoU per sample:", [round(s, 3) for s in scores], "mean", round(float(np.mean(scores)), 3))
    assert min(scores) >= 0.9, scores
    assert np.mean(scores) >= 0.95, scores


def grid_factors(shape=0, scale=5, orientation=0, pos_x=16, pos_y=16) -> torch.Tensor:
    return torch.tensor([[shape, scale, orientation, pos_x, pos_y]])


@pytest.mark.parametrize("shape, expected", [
    (0, 19.2 ** 2), (1, math.pi * 12.9 * 7.2), (2, 227.0),
])
@pytest.mark.parametrize("scale_class", [0, 5])
def test_shape_areas_follow_the_measured_geometry(shape, expected, scale_class):
    # Averaged over 32 sub-pixel positions and orientations, pixel quantisation cancels out.
    scale = 0.5 + 0.1 * scale_class
    k = torch.arange(32)
    factors = torch.stack([torch.full_like(k, shape), torch.full_like(k, scale_class), (k * 5) % 40,
                           k, (k * 7) % 32], dim=1)
    mean_area = float(render_dsprites(factors).flatten(1).sum(1).float().mean())
    assert mean_area == pytest.approx(expected * scale ** 2, rel=0.03)


def centroid(image: torch.Tensor) -> tuple[float, float]:
    rows, cols = image.reshape(64, 64).nonzero(as_tuple=True)
    return float(cols.float().mean()), float(rows.float().mean())


def test_heart_is_upright_and_turns_counter_clockwise():
    centre = 15.5 + 32 * 16 / 31
    # Orientation 0: the lobes (most of the area) lie above the centre (y points down).
    x, y = centroid(render_dsprites(grid_factors(2, 5, 0)))
    assert y < centre - 1 and abs(x - centre) < 0.5
    # Class 10 is ~92 degrees: counter-clockwise on screen moves the top to the left.
    x, y = centroid(render_dsprites(grid_factors(2, 5, 10)))
    assert x < centre - 1 and abs(y - centre) < 0.7
    # The ellipse's long axis is horizontal at 0 and vertical near 90 degrees.
    flat = render_dsprites(grid_factors(1, 5, 0))[0, 0]
    upright = render_dsprites(grid_factors(1, 5, 10))[0, 0]
    assert flat.any(0).sum() > flat.any(1).sum() + 8
    assert upright.any(1).sum() > upright.any(0).sum() + 8


def test_position_moves_the_centre_by_32_pixels_over_the_range():
    left = centroid(render_dsprites(grid_factors(0, 2, 0, 0, 0)))
    right = centroid(render_dsprites(grid_factors(0, 2, 0, 31, 31)))
    assert right[0] - left[0] == pytest.approx(32, abs=0.6)
    assert right[1] - left[1] == pytest.approx(32, abs=0.6)
    assert left[0] == pytest.approx(15.5, abs=0.6)


def test_render_is_deterministic_and_independent_of_the_batch():
    ds = DSprites()
    factors = ds.sample_factors(200, torch.Generator().manual_seed(3))
    batch = ds.images(factors)
    assert batch.dtype == torch.uint8 and batch.shape == (200, 1, 64, 64)
    assert set(batch.unique().tolist()) <= {0, 1}
    assert torch.equal(batch, ds.images(factors))
    singles = torch.cat([ds.images(factors[i:i + 1]) for i in range(0, 200, 37)])
    assert torch.equal(singles, batch[::37])
    # Every image holds a shape fully inside the frame.
    assert (batch.flatten(1).sum(1) > 40).all()
    assert batch[:, :, 0].sum() == 0 and batch[:, :, -1].sum() == 0


def test_interface_len_getitem_and_sampling():
    ds = DSprites()
    assert ds.factor_sizes == FACTOR_SIZES == (3, 6, 40, 32, 32)
    assert ds.factor_names == ("shape", "scale", "orientation", "pos_x", "pos_y")
    assert len(ds) == 737_280
    strides = torch.tensor([245760, 40960, 1024, 32, 1])
    for index in (0, 1, 33, 245_761, 737_279):
        image, factors = ds[index]
        assert int(factors @ strides) == index
        assert torch.equal(image, ds.images(factors[None])[0])
    assert torch.equal(ds[-1][1], torch.tensor([2, 5, 39, 31, 31]))
    with pytest.raises(IndexError):
        ds[737_280]
    gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, b = ds.sample_factors(5000, gen_a), ds.sample_factors(5000, gen_b)
    assert torch.equal(a, b) and a.dtype == torch.int64 and a.shape == (5000, 5)
    assert (a.min(0).values == 0).all()
    assert torch.equal(a.max(0).values, torch.tensor(FACTOR_SIZES) - 1)


def test_bad_factors_are_rejected_with_clear_errors():
    ds = DSprites()
    with pytest.raises(ValueError, match=r"shape \(n, 5\)"):
        ds.images(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        ds.images(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="orientation"):
        ds.images(torch.tensor([[0, 0, 40, 0, 0]]))


# ---------------------------------------------------------------------------------------------
# The official npz loader, on small synthetic files with the official keys
# ---------------------------------------------------------------------------------------------
REDUCED_SIZES = (3, 2, 2, 2, 3)


def write_npz(path, *, sizes=REDUCED_SIZES, shuffle=False, compressed=True, drop=None, imgs_shape=None):
    """A reduced dSprites grid: image i carries its own grid index in binary in the first 8
    pixels of its first row (0/1 pixels, as the official file)."""
    n = math.prod(sizes)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1).reshape(n, len(sizes))
    classes = np.concatenate([np.zeros((n, 1), np.int64), grid], axis=1)
    imgs = np.zeros((n, 64, 64), np.uint8)
    imgs[:, 0, :8] = (np.arange(n)[:, None] >> np.arange(8)) & 1
    if shuffle:
        order = np.random.default_rng(0).permutation(n)
        classes, imgs = classes[order], imgs[order]
    if imgs_shape is not None:
        imgs = np.zeros(imgs_shape, np.uint8)
    arrays = {"imgs": imgs, "latents_classes": classes, "latents_values": classes.astype(np.float64)}
    if drop:
        del arrays[drop]
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return str(path)


@pytest.mark.parametrize("compressed", [True, False])
@pytest.mark.parametrize("shuffle", [False, True])
def test_official_file_loader_on_a_reduced_grid(tmp_path, compressed, shuffle):
    ds = DSprites(path=write_npz(tmp_path / "d.npz", shuffle=shuffle, compressed=compressed))
    assert ds.factor_sizes == REDUCED_SIZES and len(ds) == 72
    assert ds._imgs.dtype == np.uint8
    if not compressed:
        assert isinstance(ds._imgs, np.memmap)  # stored members are memory-mapped, not read
    factors = ds.sample_factors(20, torch.Generator().manual_seed(0))
    images = ds.images(factors)
    assert images.dtype == torch.uint8 and images.shape == (20, 1, 64, 64)
    assert torch.equal(decode_index(images), ds.index_of_factors(factors))
    image, f = ds[41]
    assert int(ds.index_of_factors(f[None])) == 41 and int(decode_index(image[None])) == 41


def decode_index(images: torch.Tensor) -> torch.Tensor:
    """The grid index ``write_npz`` wrote into images (n, 1, 64, 64)."""
    return (images[:, 0, 0, :8].long() << torch.arange(8)).sum(1)


def test_loader_errors_name_the_file_and_the_problem(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        DSprites(path=missing)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip archive at all")
    with pytest.raises(ValueError, match="corrupt.npz"):
        DSprites(path=corrupt)
    truncated = tmp_path / "truncated.npz"
    data = open(write_npz(tmp_path / "full.npz"), "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.npz"):
        DSprites(path=truncated)
    with pytest.raises(ValueError, match="latents_classes"):
        DSprites(path=write_npz(tmp_path / "nokey.npz", drop="latents_classes"))
    with pytest.raises(ValueError, match=r"'imgs' must be uint8 of shape \(N, 64, 64\)"):
        DSprites(path=write_npz(tmp_path / "small.npz", imgs_shape=(72, 32, 32)))
    with pytest.raises(ValueError, match=r"latents_classes' must be integer of shape \(71, 6\)"):
        DSprites(path=write_npz(tmp_path / "count.npz", imgs_shape=(71, 64, 64)))


def test_index_must_be_an_integer_and_errors_report_the_index_given():
    ds = DSprites()
    for bad in (2.7, 2.0, "3", torch.tensor(2.5), True):
        with pytest.raises(TypeError, match="index: expected an integer"):
            ds[bad]
    assert torch.equal(ds[np.int64(33)][1], ds[33][1]) and torch.equal(ds[torch.tensor(33)][1], ds[33][1])
    with pytest.raises(IndexError, match=r"index -737281 out of range .* \(valid: -737280 to 737279\)"):
        ds[-737_281]
    with pytest.raises(IndexError, match="index 737280 out of range"):
        ds[737_280]


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8])
def test_factors_of_any_integer_dtype_are_accepted(dtype):
    ds = DSprites()
    factors = torch.tensor([[1, 2, 3, 4, 5], [2, 5, 39, 31, 31]])
    assert torch.equal(ds.images(factors.to(dtype)), ds.images(factors))
    with pytest.raises(TypeError, match="integer"):
        ds.images(factors.bool())


def test_a_file_with_pixels_above_one_is_refused_at_load(tmp_path):
    path = write_npz(tmp_path / "d.npz")
    arrays = dict(np.load(path))
    arrays["imgs"] = arrays["imgs"] * 255  # a 0/255 file
    np.savez(tmp_path / "x255.npz", **arrays)
    with pytest.raises(ValueError, match=r"x255.npz.*0/1 pixels.*found the value 255"):
        DSprites(path=tmp_path / "x255.npz")
