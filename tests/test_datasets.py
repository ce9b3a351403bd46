"""fastfvae.data's other sets: names()/load(), the loaders of the official file formats (on small
files written in each format: tests/_dataset_files.py), and dSprites' procedural variants checked
against a transcription of disentanglement_lib's formulas with the same random draws."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from fastfvae import data
from fastfvae.data import DataFileError
from tests import _dataset_files as files

h5py = pytest.importorskip("h5py")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Table caches in the test's folder, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def check_round_trips(dataset, expected_image):
    """factor <-> index <-> image: every grid index gives its own image and factors, and
    images(factors) gives the same image; sample_factors stays in range."""
    n = len(dataset)
    for i in range(n):
        image, factors = dataset[i]
        assert torch.equal(image, expected_image(i)), i
        if not dataset.random_observations:  # else images() draws the hidden column (tested apart)
            assert torch.equal(dataset.images(factors[None])[0], image), i
        assert factors.tolist() == dataset.grid_of_index(torch.tensor([i]))[0][list(dataset.latent)].tolist()
    factors = dataset.sample_factors(500, torch.Generator().manual_seed(1))
    assert factors.dtype == torch.long and factors.shape == (500, len(dataset.factor_sizes))
    for k, size in enumerate(dataset.factor_sizes):
        assert set(factors[:, k].tolist()) == set(range(size)), k  # uniform: every class shows up
    table = dataset.image_table()
    assert table.dtype == torch.uint8 and table.shape == (n, dataset.num_channels, 64, 64)
    assert torch.equal(table[3].float() / 255, expected_image(3))


def test_names_are_disentanglement_libs():
    assert data.names() == ("dsprites", "dsprites_noshape", "color_dsprites", "noisy_dsprites",
                            "scream_dsprites", "smallnorb", "cars3d", "shapes3d", "mpi3d_toy",
                            "mpi3d_realistic", "mpi3d_real")
    with pytest.raises(ValueError, match="name: expected one of"):
        data.load("celeba")
    with pytest.raises(TypeError, match="load\\('dsprites'\\)"):
        data.load("dsprites", seed=3)


def test_the_official_grids_have_the_official_image_counts():
    from fastfvae.data import cars3d, mpi3d, shapes3d, smallnorb

    assert math.prod(shapes3d.FACTOR_SIZES) == 480_000
    assert math.prod(mpi3d.FACTOR_SIZES) == 1_036_800 and math.prod(mpi3d.FIRST_RELEASE_SIZES) == 460_800
    assert math.prod(smallnorb.GRID_SIZES) == 2 * 24_300
    assert math.prod(cars3d.FACTOR_SIZES) == 17_568


@pytest.mark.parametrize("name, official", [
    ("shapes3d", "3dshapes.h5"), ("mpi3d_real", "mpi3d_real.npz"), ("cars3d", "car_"),
    ("smallnorb", "smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat")])
def test_a_missing_file_names_the_file_the_source_and_the_option(tmp_path, name, official):
    with pytest.raises(DataFileError, match="--data PATH"):
        data.load(name)
    with pytest.raises(DataFileError) as error:
        data.load(name, path=tmp_path / "nowhere")
    message = str(error.value)
    assert "--data PATH" in message and "http" in message, message
    if name in ("shapes3d", "mpi3d_real"):
        assert official in message, message
    with pytest.raises(DataFileError) as error:  # an empty folder: the file inside is named
        data.load(name, path=tmp_path)
    assert official in str(error.value) and "http" in str(error.value), str(error.value)


# -- Shapes3D ---------------------------------------------------------------------------------
def test_shapes3d_round_trips(tmp_path):
    path, sizes, images, labels = files.shapes3d_file(tmp_path)
    dataset = data.load("shapes3d", path, factor_sizes=sizes)
    assert dataset.factor_sizes == sizes and dataset.num_channels == 3 and len(dataset) == math.prod(sizes)
    assert dataset.factor_names[0] == "floor_hue" and dataset.factor_names[-1] == "orientation"
    check_round_trips(dataset, lambda i: torch.from_numpy(images[i]).permute(2, 0, 1).float() / 255)
    assert isinstance(dataset, data.TrainingData)
    # a folder holding the file works too
    assert len(data.load("shapes3d", tmp_path, factor_sizes=sizes)) == len(dataset)


def test_shapes3d_refuses_wrong_files(tmp_path):
    path, sizes, _, labels = files.shapes3d_file(tmp_path)
    with pytest.raises(DataFileError, match=r"480000"):  # a small file is not the official one
        data.load("shapes3d", path)
    with h5py.File(path, "r+") as f:  # rows not in the row-major order
        f["labels"][...] = labels[::-1]
    with pytest.raises(DataFileError, match="row-major"):
        data.load("shapes3d", path, factor_sizes=sizes)
    files.shapes3d_file(tmp_path, shape=(96, 32, 32, 3))
    with pytest.raises(DataFileError, match="'images' is uint8 \\(96, 32, 32, 3\\)"):
        data.load("shapes3d", path, factor_sizes=sizes)
    files.shapes3d_file(tmp_path)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(DataFileError, match="3dshapes.h5"):
        dataset = data.load("shapes3d", path, factor_sizes=sizes)
        dataset.image_table()  # an h5 truncated in its data must not be half-read either


# -- MPI3D ------------------------------------------------------------------------------------
@pytest.mark.parametrize("compressed", [False, True])
def test_mpi3d_round_trips(tmp_path, compressed):
    path, sizes, images = files.mpi3d_file(tmp_path, "mpi3d_realistic", compressed=compressed)
    dataset = data.load("mpi3d_realistic", path, factor_sizes=sizes)
    # memory-mapped: the stored archive itself, a compressed one from the table cache
    assert isinstance(dataset._rows, np.memmap)
    cached = list((tmp_path / "cache" / "fastfvae").glob("mpi3d_realistic-table-*.npy"))
    assert len(cached) == compressed
    assert dataset.factor_names == ("object_color", "object_shape", "object_size", "camera_height",
                                    "background_color", "horizontal_axis", "vertical_axis")
    check_round_trips(dataset, lambda i: torch.from_numpy(images[i]).permute(2, 0, 1).float() / 255)


def test_mpi3d_refuses_wrong_files(tmp_path):
    path, sizes, images = files.mpi3d_file(tmp_path)
    with pytest.raises(DataFileError, match="1036800"):
        data.load("mpi3d_toy", path)
    with pytest.raises(DataFileError, match="expected 12 for factor sizes"):
        data.load("mpi3d_toy", path, factor_sizes=(1, 2, 1, 1, 1, 2, 3))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 5000)
    with pytest.raises(DataFileError, match="mpi3d_toy.npz"):
        data.load("mpi3d_toy", path, factor_sizes=sizes)
    np.savez(path, imgs=images)
    with pytest.raises(DataFileError, match="lacks 'images'"):
        data.load("mpi3d_toy", path, factor_sizes=sizes)
    np.savez(path, images=images[..., 0])
    with pytest.raises(DataFileError, match="expected uint8 \\(N, 64, 64, 3\\)"):
        data.load("mpi3d_toy", path, factor_sizes=sizes)


# -- SmallNORB --------------------------------------------------------------------------------
def dlib_norb_resize(image: np.ndarray) -> np.ndarray:
    """disentanglement_lib's _resize_images on one image, transcribed: it reads the bytes as int8,
    and resizes ``fromarray`` of that array with Lanczos (its ANTIALIAS) to 64x64; values clipped
    to 0..255 (the one step fastfvae adds)."""
    from PIL import Image

    big = Image.fromarray(image.view(np.int8))
    return np.clip(np.asarray(big.resize((64, 64), Image.Resampling.LANCZOS)), 0, 255)


def test_smallnorb_round_trips_and_hides_the_instance(tmp_path):
    folder, sizes, images, features, _ = files.norb_files(tmp_path)
    dataset = data.load("smallnorb", folder, factor_sizes=sizes)
    assert dataset.factor_names == ("category", "elevation", "azimuth", "lighting")
    assert dataset.factor_sizes == (2, 2, 3, 2) and len(dataset) == math.prod(sizes)
    assert dataset.num_channels == 1
    # the fixture's rows were written in grid order before the chunks were split and shuffled
    check_round_trips(dataset, lambda i: torch.from_numpy(dlib_norb_resize(images[i, 0])).float()[None] / 255)
    # images(factors) draws the instance: each image is one of the instances' images
    factors = dataset.sample_factors(64, torch.Generator().manual_seed(0))
    out = dataset.images(factors)
    table = dataset.image_table().float() / 255
    seen = set()
    for row, image in zip(factors, out):
        grid = torch.cat([row[:1], torch.tensor([0]), row[1:]])
        matches = []
        for instance in range(sizes[1]):
            grid[1] = instance
            if torch.equal(table[int(dataset.grid_index(grid[None]))], image):
                matches.append(instance)
        assert matches, row
        seen.update(matches)
    assert seen == set(range(sizes[1]))
    # the same seed draws the same instances
    again = data.load("smallnorb", folder, factor_sizes=sizes)
    assert torch.equal(again.images(factors), out)


def test_smallnorb_refuses_damaged_files(tmp_path):
    folder, sizes, *_ = files.norb_files(tmp_path)
    with pytest.raises(DataFileError, match="do not form the grid"):
        data.load("smallnorb", folder)  # the official grid
    dat = os.path.join(folder, f"smallnorb-{files.NORB_CHUNKS[1]}-dat.mat")
    with open(dat, "r+b") as f:
        f.truncate(os.path.getsize(dat) - 1)
    with pytest.raises(DataFileError, match="truncated or damaged") as error:
        data.load("smallnorb", folder, factor_sizes=sizes)
    assert "testing-dat.mat" in str(error.value)
    with open(dat, "r+b") as f:
        f.write(b"\x00\x00\x00\x00")
    with pytest.raises(DataFileError, match="unknown magic"):
        data.load("smallnorb", folder, factor_sizes=sizes)
    os.remove(dat)
    with pytest.raises(DataFileError, match="does not exist.*testing-dat.mat"):
        data.load("smallnorb", folder, factor_sizes=sizes)


# -- Cars3D -----------------------------------------------------------------------------------
def dlib_cars(meshes, sizes) -> np.ndarray:
    """disentanglement_lib's Cars3D._load_data / _load_mesh, transcribed (uint8 kept)."""
    from PIL import Image

    elevations, azimuths, cars = sizes
    bases = math.prod(sizes) // np.cumprod(sizes)
    dataset = np.zeros((math.prod(sizes), 64, 64, 3), dtype=np.uint8)
    for i, im in enumerate(meshes):
        mesh = np.einsum("abcde->deabc", im)
        flat = mesh.reshape((-1,) + mesh.shape[2:])
        rescaled = []
        for picture in flat:
            pic = Image.fromarray(picture)
            pic.thumbnail((64, 64), Image.Resampling.LANCZOS)
            rescaled.append(np.array(pic))
        factors = np.transpose([np.tile(np.arange(elevations), azimuths),
                                np.repeat(np.arange(azimuths), elevations), np.tile(i, elevations * azimuths)])
        dataset[factors @ bases] = np.stack(rescaled)
    return dataset


def test_cars3d_matches_disentanglement_lib(tmp_path):
    folder, sizes, meshes = files.cars_files(tmp_path, side=128)
    dataset = data.load("cars3d", folder, factor_sizes=sizes)
    assert dataset.factor_names == ("elevation", "azimuth", "object_type") and dataset.factor_sizes == sizes
    expected = dlib_cars(meshes, sizes)
    check_round_trips(dataset, lambda i: torch.from_numpy(expected[i]).permute(2, 0, 1).float() / 255)


def test_cars3d_refuses_wrong_files(tmp_path):
    folder, sizes, meshes = files.cars_files(tmp_path)
    with pytest.raises(DataFileError, match="holds 2 .mat files"):
        data.load("cars3d", folder)
    import scipy.io
    scipy.io.savemat(os.path.join(folder, "car_002_mesh.mat"), {"im": meshes[1][..., :1]})
    with pytest.raises(DataFileError, match="'im' is uint8 \\(16, 16, 3, 3, 1\\).*car_002_mesh.mat"):
        data.load("cars3d", folder, factor_sizes=sizes)
    with open(os.path.join(folder, "car_002_mesh.mat"), "wb") as f:
        f.write(b"not a mat file")
    with pytest.raises(DataFileError, match="car_002_mesh.mat"):
        data.load("cars3d", folder, factor_sizes=sizes)


# -- dSprites' procedural variants --------------------------------------------------------------
def dlib_color(observations, random_state):
    """ColorDSprites.sample_observations_from_factors after the sprite lookup (NHWC)."""
    observations = np.repeat(observations, 3, axis=3)
    color = np.repeat(np.repeat(random_state.uniform(0.5, 1, [observations.shape[0], 1, 1, 3]),
                                observations.shape[1], axis=1), observations.shape[2], axis=2)
    return observations * color


def dlib_noisy(observations, random_state):
    observations = np.repeat(observations, 3, axis=3)
    color = random_state.uniform(0, 1, [observations.shape[0], 64, 64, 3])
    return np.minimum(observations + color, 1.)


def dlib_scream(observations, random_state, scream):
    observations = np.repeat(observations, 3, axis=3)
    for i in range(observations.shape[0]):
        x_crop = random_state.randint(0, scream.shape[0] - 64)
        y_crop = random_state.randint(0, scream.shape[1] - 64)
        background = (scream[x_crop:x_crop + 64, y_crop:y_crop + 64] + random_state.uniform(0, 1, size=3)) / 2.
        mask = (observations[i] == 1)
        background[mask] = 1 - background[mask]
        observations[i] = background
    return observations


def painting_file(folder, width=400, height=300):
    from PIL import Image

    rng = np.random.default_rng(5)
    path = os.path.join(folder, "scream.png")
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def sprites(n=6, seed=0):
    dataset = data.DSprites()
    factors = dataset.sample_factors(n, torch.Generator().manual_seed(seed))
    return factors, dataset.images(factors).float()


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(0, 2, 3, 1).double().numpy()


def test_color_and_noisy_rules_match_disentanglement_lib():
    from fastfvae.data.variants import color_rule, noisy_rule

    _, sprite = sprites()
    n = len(sprite)
    expected = dlib_color(nhwc(sprite), np.random.RandomState(3))
    color = np.random.RandomState(3).uniform(0.5, 1, [n, 1, 1, 3]).reshape(n, 3)
    np.testing.assert_allclose(nhwc(color_rule(sprite.double(), torch.from_numpy(color))), expected, rtol=0, atol=1e-12)
    expected = dlib_noisy(nhwc(sprite), np.random.RandomState(4))
    noise = np.random.RandomState(4).uniform(0, 1, [n, 64, 64, 3]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(nhwc(noisy_rule(sprite.double(), torch.from_numpy(noise))), expected, rtol=0, atol=1e-12)


def test_scream_rule_matches_disentanglement_lib(tmp_path):
    from PIL import Image

    from fastfvae.data.variants import load_painting, scream_rule

    path = painting_file(tmp_path)
    image = Image.open(path)
    image.thumbnail((350, 274))  # disentanglement_lib's thumbnail((350, 274, 3)): Pillow reads (w, h)
    scream = np.array(image) * 1. / 255.
    painting = load_painting(path)
    assert painting.shape == (3,) + scream.shape[:2] and scream.shape[1] == 350
    np.testing.assert_allclose(painting.permute(1, 2, 0).double().numpy(), scream, atol=1e-7)
    _, sprite = sprites(8)
    expected = dlib_scream(nhwc(sprite), np.random.RandomState(7), scream)
    state = np.random.RandomState(7)
    draws = [(state.randint(0, scream.shape[0] - 64), state.randint(0, scream.shape[1] - 64),
              state.uniform(0, 1, size=3)) for _ in range(len(sprite))]
    row, col = (torch.tensor([d[k] for d in draws]) for k in (0, 1))
    tint = torch.tensor(np.stack([d[2] for d in draws]))
    out = scream_rule(sprite.double(), torch.from_numpy(scream).permute(2, 0, 1), row, col, tint)
    np.testing.assert_allclose(nhwc(out), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["color_dsprites", "noisy_dsprites", "scream_dsprites"])
def test_coloured_variants_are_seeded_and_in_range(tmp_path, name):
    options = {"scream_image": painting_file(tmp_path)} if name == "scream_dsprites" else {}
    dataset = data.load(name, seed=11, **options)
    assert dataset.num_channels == 3 and dataset.factor_sizes == (3, 6, 40, 32, 32)
    factors, sprite = sprites(16)
    out = dataset.images(factors)
    assert out.dtype == torch.float32 and out.shape == (16, 3, 64, 64)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(data.load(name, seed=11, **options).images(factors), out)  # reproducible
    assert not torch.equal(dataset.images(factors), out)  # fresh draws per observation
    on = sprite.expand(-1, 3, -1, -1) == 1
    if name == "color_dsprites":  # one colour in [0.5, 1) on the sprite, black elsewhere
        assert bool((out[~on] == 0).all()) and float(out[on].min()) >= 0.5
    if name == "noisy_dsprites":  # the sprite is white, noise elsewhere
        assert bool((out[on] == 1).all()) and 0.4 < float(out[~on].mean()) < 0.6
    # the device path draws with the device's generator and keeps the rule
    transformed = dataset.device_transform(sprite)
    assert transformed.shape == (16, 3, 64, 64) and float(transformed.max()) <= 1


def test_scream_needs_its_image(tmp_path):
    with pytest.raises(ValueError, match="--scream-image PATH"):
        data.load("scream_dsprites")
    with pytest.raises(FileNotFoundError, match="--scream-image PATH"):
        data.load("scream_dsprites", scream_image=tmp_path / "none.jpg")


def test_dsprites_noshape_hides_the_shape():
    dataset = data.load("dsprites_noshape", seed=2)
    full = data.DSprites()
    assert dataset.factor_sizes == (6, 40, 32, 32) and len(dataset) == len(full)
    assert dataset.factor_names == ("scale", "orientation", "pos_x", "pos_y")
    factors = dataset.sample_factors(200, torch.Generator().manual_seed(0))
    images = dataset.images(factors)
    by_shape = [full.images(torch.cat([torch.full((200, 1), s), factors], 1)) for s in range(3)]
    which = [[torch.equal(images[i], by_shape[s][i]) for s in range(3)] for i in range(200)]
    assert all(any(row) for row in which)
    assert {row.index(True) for row in which} == {0, 1, 2}
    image, factors = dataset[12345]
    assert torch.equal(image, full[12345][0]) and factors.tolist() == full[12345][1][1:].tolist()
