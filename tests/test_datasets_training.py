"""Training, evaluate and traverse on every data set (small files in each official format,
tests/_dataset_files.py), the uint8 device table's gather, and the table caches."""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch

from fastfvae import cli, data
from fastfvae.train.whole_step import DeviceBatches, HostTableBatches, device_batches
from tests import _dataset_files as files

pytest.importorskip("h5py")
TINY = ["--batch-size", "4", "--disc-depth", "1", "--disc-width", "16", "--log-every", "1", "--quiet"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Table caches in the test's folder, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def small_official(monkeypatch, tmp_path, name):
    """(--data path, extra argv) of a small file of data set ``name``, the module's official
    sizes patched to the file's so that the command line takes it as it takes the real file."""
    from fastfvae.data import cars3d, mpi3d, shapes3d, smallnorb

    folder = tmp_path / "files"
    folder.mkdir()
    if name == "shapes3d":
        monkeypatch.setattr(shapes3d, "FACTOR_SIZES", files.SHAPES3D_SIZES)
        return files.shapes3d_file(folder)[0], []
    if name.startswith("mpi3d"):
        monkeypatch.setattr(mpi3d, "FACTOR_SIZES", files.MPI3D_SIZES)
        return files.mpi3d_file(folder, name)[0], []
    if name == "smallnorb":
        monkeypatch.setattr(smallnorb, "GRID_SIZES", files.NORB_SIZES)
        return files.norb_files(folder)[0], []
    if name == "cars3d":
        monkeypatch.setattr(cars3d, "FACTOR_SIZES", files.CARS_SIZES)
        return files.cars_files(folder)[0], []
    if name == "scream_dsprites":
        from PIL import Image
        path = str(folder / "scream.png")
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (280, 360, 3), dtype=np.uint8)).save(path)
        return None, ["--scream-image", path]
    return None, []


@pytest.mark.parametrize("name", ["shapes3d", "mpi3d_toy", "smallnorb", "cars3d", "color_dsprites",
                                  "noisy_dsprites", "scream_dsprites", "dsprites_noshape"])
def test_train_evaluate_traverse_on_each_set(tmp_path, monkeypatch, name):
    path, extra = small_official(monkeypatch, tmp_path, name)
    out = str(tmp_path / "run")
    where = ["--data", str(path)] if path else []
    argv = ["train", "--dataset", name, *where, *extra, "--steps", "2", "--out", out, "--no-metrics",
            "--packed-data", *TINY]
    if name.endswith("dsprites") or name == "dsprites_noshape":
        argv.remove("--packed-data")  # building dSprites' packed table takes minutes on a CPU
    assert cli.main(argv) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["config"]["dataset"] == name
    channels = data.load(name, path, **({"scream_image": extra[1]} if extra else {})).num_channels
    state = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert state["channels"] == channels and state["config"]["dataset"] == name
    # evaluate reads the checkpoint's data set (and its file); the real metrics, small sizes
    metrics_json = str(tmp_path / "m.json")
    assert cli.main(["evaluate", out, "--out", metrics_json, "--metrics", "mig", "--metrics-preset", "fast",
                     "--num-mixture", "64", "--num-samples", "32"]) == 0
    result = json.load(open(metrics_json))
    assert 0 <= result["metrics"]["mig"]["score"] <= 1
    assert np.isfinite(result["decomposition"]["total_correlation"])
    png = str(tmp_path / "t.png")
    assert cli.main(["traverse", out, "--out", png, "--values", "3"]) == 0
    assert os.path.getsize(png) > 0


def test_old_checkpoints_mean_dsprites(tmp_path):
    from fastfvae.cli import _dataset_of_run

    class Args:
        dataset = data = scream_image = None
        seed = 0
    args = Args()
    assert isinstance(_dataset_of_run(args, {"config": {"z_dim": 10}}), data.DSprites)


def test_the_code_table_is_skipped_where_observations_are_random():
    from fastfvae.metrics.suite import _choose_table

    assert _choose_table("auto", (3, 6, 40, 32, 32), 10 ** 7, 4_000_000)[0]
    use, reason = _choose_table("auto", (3, 6, 40, 32, 32), 10 ** 7, 4_000_000, random_observations=True)
    assert not use and "at random" in reason
    assert data.load("color_dsprites").random_observations


# -- the uint8 table on the device ------------------------------------------------------------
def test_device_batches_draw_from_the_uint8_table(tmp_path, monkeypatch):
    path, sizes, images, _ = files.shapes3d_file(tmp_path)
    dataset = data.load("shapes3d", path, factor_sizes=sizes)
    said = []
    batches = device_batches(dataset, torch.device("cpu"), 5, 2, said.append)
    assert isinstance(batches, DeviceBatches) and "uint8 table" in said[0]
    torch.manual_seed(0)
    x1, x2 = batches()
    torch.manual_seed(0)
    index = torch.randint(len(dataset), (10,))
    expected = torch.from_numpy(images[index.numpy()]).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(torch.cat([x1, x2]), expected)
    # the host fallback (a table too large for the device) draws the same way (indices from
    # the default CPU generator), and says so
    from fastfvae.train import whole_step
    monkeypatch.setattr(whole_step, "_fits_device", lambda size, device: False)
    host = device_batches(dataset, torch.device("cpu"), 5, 2, said.append)
    assert isinstance(host, HostTableBatches) and "pinned host memory" in said[-1]
    torch.manual_seed(0)
    y1, y2 = host()
    assert torch.equal(torch.cat([y1, y2]), expected)
    assert host.host and not batches.host


def test_variant_device_batches_apply_the_rule():
    dataset = data.load("color_dsprites")
    table = torch.zeros((len(dataset), 512), dtype=torch.uint8)
    table[:, :8] = 255  # the first 64 pixels on
    dataset.packed_images = lambda device=None, cache_dir=None: table
    batches = device_batches(dataset, torch.device("cpu"), 4, 1, print)
    x, _ = batches()
    assert x.shape == (4, 3, 64, 64)
    on = x[:, :, 0, :]
    assert bool((on >= 0.5).all()) and bool((x[:, :, 1:, :] == 0).all())


# -- the caches ---------------------------------------------------------------------------------
def test_resized_tables_are_cached_and_never_stale(tmp_path, monkeypatch):
    from fastfvae.data import cars3d

    folder, sizes, meshes = files.cars_files(tmp_path)
    cache = tmp_path / "cache" / "fastfvae"
    first = data.load("cars3d", folder, factor_sizes=sizes)
    assert len(list(cache.glob("cars3d-table-*.npy"))) == 1 and isinstance(first._rows, np.memmap)
    calls = []
    real_resize = cars3d.resize_rgb
    monkeypatch.setattr(cars3d, "resize_rgb", lambda images: calls.append(1) or real_resize(images))
    again = data.load("cars3d", folder, factor_sizes=sizes)  # read from the cache
    assert not calls and np.array_equal(again._rows, first._rows)
    import scipy.io  # a changed source: a new key, rebuilt
    scipy.io.savemat(os.path.join(folder, "car_001_mesh.mat"), {"im": meshes[0][::-1].copy()})
    changed = data.load("cars3d", folder, factor_sizes=sizes)
    assert calls and len(list(cache.glob("cars3d-table-*.npy"))) == 2
    assert not np.array_equal(changed._rows, first._rows)
    # a damaged cache file is rebuilt, with a warning
    newest = max(cache.glob("cars3d-table-*.npy"), key=os.path.getmtime)
    del changed
    with open(newest, "r+b") as f:
        f.truncate(200)
    calls.clear()
    with pytest.warns(UserWarning, match="rebuilding the cached image table"):
        rebuilt = data.load("cars3d", folder, factor_sizes=sizes)
    assert calls and rebuilt._rows.shape == (12, 64, 64, 3)
    assert np.load(newest).shape == (12, 64, 64, 3) and not list(cache.glob("*.tmp"))


def test_an_unwritable_cache_warns_and_keeps_the_table_in_memory(tmp_path, monkeypatch):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    folder, sizes, *_ = files.norb_files(tmp_path)
    with pytest.warns(UserWarning, match="the table stays in memory"):
        dataset = data.load("smallnorb", folder, factor_sizes=sizes)
    assert dataset.image_table().shape == (48, 1, 64, 64)


def test_shapes3d_decodes_into_the_cache_once(tmp_path):
    path, sizes, images, _ = files.shapes3d_file(tmp_path)
    dataset = data.load("shapes3d", path, factor_sizes=sizes)
    assert not isinstance(dataset._rows, np.ndarray)  # h5py until the table is asked for
    table = dataset.image_table()
    assert isinstance(dataset._rows, np.memmap)
    assert torch.equal(table, torch.from_numpy(images).permute(0, 3, 1, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(data.load("shapes3d", path, factor_sizes=sizes)._rows, np.memmap)
