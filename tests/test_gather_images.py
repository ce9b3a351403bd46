"""gather_images on every backend against the reference, the packed-table format, and the
on-disk cache of fastfvae/data/packed.py (DESIGN.md §8, §15).

The pixel values 0/1 are exact in every dtype, so backends must match the reference bit for
bit. The cache tests use small data sets (a reduced-grid npz, a few thousand procedural
images); the full 737,280-image procedural table is checked only when FASTFVAE_FULL_DATA=1
(it takes tens of seconds to render and ~400 MB of disk).
"""
from __future__ import annotations

import os
import warnings
import zipfile

import numpy as np
import pytest
import torch

import fastfvae
from fastfvae import reference
from fastfvae.data import DSprites, dsprites, packed
from fastfvae.data.dsprites import render_dsprites
from conftest import FLOAT_DTYPES, require

ROW_BYTES = 512


def random_table(rows: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (rows, ROW_BYTES), generator=g, dtype=torch.uint8)


# ---------------------------------------------------------------------------------------------
# The reference and the bit order
# ---------------------------------------------------------------------------------------------
def test_bit_order_single_pixels():
    """Pixel (row r, col c) is bit (64r + c) % 8 of byte (64r + c) // 8: one set pixel at a time."""
    for r, c in [(0, 0), (0, 7), (0, 8), (1, 0), (31, 45), (63, 63)]:
        image = torch.zeros(1, 64, 64, dtype=torch.uint8)
        image[0, r, c] = 1
        table = reference.pack_images(image)
        p = 64 * r + c
        expected = torch.zeros(1, ROW_BYTES, dtype=torch.uint8)
        expected[0, p // 8] = 1 << (p % 8)
        assert torch.equal(table, expected), (r, c)
        assert torch.equal(reference.unpack_images(table), image)


def test_reference_pack_matches_numpy_little_bitorder_and_roundtrips():
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 2, (9, 64, 64), generator=g, dtype=torch.uint8)
    table = reference.pack_images(images)
    assert np.array_equal(table.numpy(), np.packbits(images.reshape(9, -1).numpy(), axis=1, bitorder="little"))
    assert np.array_equal(packed.pack_images(images), table.numpy())
    assert torch.equal(reference.unpack_images(table), images)


def test_reference_gather_images_is_the_indexed_unpack():
    table = random_table(11)
    index = torch.tensor([4, 0, 10, 4])
    out = reference.gather_images(table, index, torch.float64)
    assert out.shape == (4, 1, 64, 64) and out.dtype == torch.float64
    expected = reference.unpack_images(table[index]).unsqueeze(1).double()
    assert torch.equal(out, expected)


# ---------------------------------------------------------------------------------------------
# Every backend against the reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32], ids=str)
def test_gather_images_matches_reference(backend, device, dtype, batch, index_dtype):
    require(backend, "gather_images", device, dtype)
    table = random_table(37, seed=batch).to(device)
    g = torch.Generator().manual_seed(100 + batch)
    index = torch.randint(0, 37, (batch,), generator=g).to(index_dtype).to(device)
    out = fastfvae.gather_images(table, index, dtype, backend=backend)
    expected = reference.gather_images(table.cpu(), index.cpu(), dtype)
    assert out.shape == (batch, 1, 64, 64) and out.dtype == dtype and out.is_contiguous()
    assert torch.equal(out.cpu(), expected), (out.cpu() != expected).nonzero()[:5]


def test_gather_images_strided_inputs(backend, device):
    """A packed table whose rows are a slice of wider rows, an index with stride 3."""
    require(backend, "gather_images", device, torch.float32)
    wide = random_table(20, seed=5).repeat(1, 2)[:, 100:100 + ROW_BYTES].to(device)
    assert wide.stride() == (2 * ROW_BYTES, 1)
    index = torch.tensor([3, 99, 99, 19, 99, 99, 0, 99, 99, 7], device=device)[::3]  # 3, 19, 0, 7
    out = fastfvae.gather_images(wide, index, backend=backend)
    assert torch.equal(out.cpu(), reference.gather_images(wide.cpu().contiguous(), index.cpu().contiguous()))
    transposed = wide.t().contiguous().t()  # column-major rows: a byte stride of N
    out = fastfvae.gather_images(transposed, index, backend=backend)
    assert torch.equal(out.cpu(), reference.gather_images(wide.cpu().contiguous(), index.cpu().contiguous()))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_gather_images_out_of_range_index_gives_nan(backend, device, dtype):
    require(backend, "gather_images", device, dtype)
    table = random_table(5, seed=9).to(device)
    index = torch.tensor([2, -1, 5, 4, 2**40, 0], device=device)
    out = fastfvae.gather_images(table, index, dtype, backend=backend).cpu()
    bad = torch.tensor([False, True, True, False, True, False])
    assert out[bad].isnan().all()
    assert not out[~bad].isnan().any()
    assert torch.equal(out[~bad], reference.unpack_images(table.cpu()[[2, 4, 0]]).unsqueeze(1).to(dtype))
    torch.testing.assert_close(out, reference.gather_images(table.cpu(), index.cpu(), dtype), equal_nan=True,
                               rtol=0, atol=0)


def test_gather_images_auto_and_env_backend(monkeypatch):
    table = random_table(8)
    index = torch.tensor([1, 7])
    expected = reference.gather_images(table, index)
    assert torch.equal(fastfvae.gather_images(table, index), expected)
    from fastfvae import backends
    monkeypatch.setenv("FASTFVAE_BACKEND", "reference")
    backends.clear_cache()
    try:
        assert torch.equal(fastfvae.gather_images(table, index), expected)
    finally:
        backends.clear_cache()


# ---------------------------------------------------------------------------------------------
# Bad input: errors name the argument, the expected and the actual value
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("packed_arg, index_arg, dtype, error, words", [
    (np.zeros((4, 512), np.uint8), torch.tensor([0]), torch.float32, TypeError, ["packed", "torch.Tensor", "ndarray"]),
    (torch.zeros(4, 512), torch.tensor([0]), torch.float32, TypeError, ["packed", "uint8", "float32"]),
    (torch.zeros(4, 511, dtype=torch.uint8), torch.tensor([0]), torch.float32, ValueError, ["packed", "(N, 512)", "(4, 511)"]),
    (torch.zeros(0, 512, dtype=torch.uint8), torch.tensor([0]), torch.float32, ValueError, ["packed", "N >= 1", "(0, 512)"]),
    (torch.zeros(4, 1, 512, dtype=torch.uint8), torch.tensor([0]), torch.float32, ValueError, ["packed", "(4, 1, 512)"]),
    (torch.zeros(4, 512, dtype=torch.uint8), [0, 1], torch.float32, TypeError, ["index", "torch.Tensor", "list"]),
    (torch.zeros(4, 512, dtype=torch.uint8), torch.tensor([0.0]), torch.float32, TypeError, ["index", "int64", "float32"]),
    (torch.zeros(4, 512, dtype=torch.uint8), torch.tensor([[0]]), torch.float32, ValueError, ["index", "1-D", "(1, 1)"]),
    (torch.zeros(4, 512, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), torch.float32, ValueError, ["index", "B >= 1", "(0,)"]),
    (torch.zeros(4, 512, dtype=torch.uint8), torch.tensor([0]), torch.int32, TypeError, ["dtype", "float32", "torch.int32"]),
    (torch.zeros(4, 512, dtype=torch.uint8), torch.tensor([0]), "float32", TypeError, ["dtype", "'float32'"]),
])
def test_gather_images_bad_input(packed_arg, index_arg, dtype, error, words):
    with pytest.raises(error) as info:
        fastfvae.gather_images(packed_arg, index_arg, dtype)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_gather_images_bad_backend():
    with pytest.raises(ValueError, match="backend"):
        fastfvae.gather_images(random_table(2), torch.tensor([0]), backend="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gather_images_device_mismatch():
    with pytest.raises(ValueError, match="index: expected a tensor on packed's device"):
        fastfvae.gather_images(random_table(2).cuda(), torch.tensor([0]))


def test_native_library_rejects_bad_sizes():
    """The C entry point checks its arguments too (a ctypes caller bypassing Python)."""
    from fastfvae.backends import native
    library, reason = native.load("cpu")
    if library is None:
        pytest.skip(reason)
    function = library.functions["ffv_gather_images_forward"]
    out = torch.empty(1, 4096)
    table = random_table(2)
    index = torch.tensor([0])
    status = function(0, 0, 1, table.data_ptr(), 512, index.data_ptr(), 1, 0, out.data_ptr(), None)
    assert status == 1 and "N must be >= 1" in library.last_error()
    status = function(0, 2, 1, None, 512, index.data_ptr(), 1, 0, out.data_ptr(), None)
    assert status == 1 and "packed must not be NULL" in library.last_error()
    status = function(7, 2, 1, table.data_ptr(), 512, index.data_ptr(), 1, 0, out.data_ptr(), None)
    assert status == 2 and "dtype code 7" in library.last_error()


# ---------------------------------------------------------------------------------------------
# torch.compile and opcheck (native and reference; Triton under the interpreter cannot be traced)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("compile_backend", ["native", "reference"])
def test_gather_images_opcheck(compile_backend):
    require(compile_backend, "gather_images", "cpu", torch.float32)
    torch.library.opcheck(torch.ops.fastfvae.gather_images.default,
                          (random_table(6), torch.tensor([5, 0, 2]), torch.float32, compile_backend))


@pytest.mark.parametrize("compile_backend", ["native", "reference"])
def test_gather_images_compiles_without_graph_breaks(compile_backend):
    require(compile_backend, "gather_images", "cpu", torch.float32)
    table = random_table(30)

    def batch_mean():
        index = torch.randint(0, 30, (16,))
        return fastfvae.gather_images(table, index, backend=compile_backend).mean(dim=(1, 2, 3)), index

    torch._dynamo.reset()
    compiled = torch.compile(batch_mean, fullgraph=True, backend="aot_eager")
    torch.manual_seed(0)
    means, index = compiled()
    expected = reference.gather_images(table, index).mean(dim=(1, 2, 3))
    assert torch.equal(means, expected)


# ---------------------------------------------------------------------------------------------
# Packing and the on-disk cache
# ---------------------------------------------------------------------------------------------
def test_pack_images_rejects_non_binary_and_wrong_shapes():
    with pytest.raises(packed.NotPackable, match="binary"):
        packed.pack_images(np.full((2, 64, 64), 2, np.uint8))
    with pytest.raises(packed.NotPackable, match=r"\(n, 64, 64\)"):
        packed.pack_images(np.zeros((2, 3, 64, 64), np.uint8))
    with pytest.raises(packed.NotPackable, match="float32"):
        packed.pack_images(np.zeros((2, 64, 64), np.float32))


class _SubsetDSprites(DSprites):
    """The procedural dSprites restricted to its first ``rows`` indices (a small table to build)."""

    def __init__(self, rows):
        super().__init__()
        self.rows = rows

    def __len__(self):
        return self.rows


def test_build_table_equals_packed_renders():
    dataset = _SubsetDSprites(3000)
    table = packed.build_table(dataset, chunk=1024)
    index = torch.tensor([0, 1, 1023, 1024, 2047, 2999])
    renders = render_dsprites(dataset.factors_of_index(index))
    assert np.array_equal(table[index.numpy()], packed.pack_images(renders))
    unpacked = fastfvae.gather_images(torch.from_numpy(table), index)
    assert torch.equal(unpacked, renders.float())


def test_cache_builds_once_then_reads(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return random_table(10, seed=len(calls)).numpy()

    first = packed.load_or_build("toy", "a" * 64, 10, build, tmp_path)
    second = packed.load_or_build("toy", "a" * 64, 10, build, tmp_path)
    assert len(calls) == 1 and np.array_equal(first, second)
    assert [p.name for p in tmp_path.iterdir()] == [packed.cache_path("toy", "a" * 64, tmp_path).name]
    other = packed.load_or_build("toy", "b" * 64, 10, build, tmp_path)  # another source: another file
    assert len(calls) == 2 and not np.array_equal(first, other)
    assert len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize("damage", ["flip_payload_byte", "truncate", "bad_magic", "other_rows"])
def test_cache_rebuilds_damaged_or_stale_file(tmp_path, damage):
    key, rows = "c" * 64, 6
    table = random_table(rows).numpy()
    path = packed.cache_path("toy", key, tmp_path)
    packed.write_table(path, table, key)
    data = bytearray(path.read_bytes())
    if damage == "flip_payload_byte":
        data[-100] ^= 0x10
    elif damage == "truncate":
        data = data[:-1]
    elif damage == "bad_magic":
        data[0] ^= 1
    path.write_bytes(bytes(data))
    expected_rows = rows + 1 if damage == "other_rows" else rows
    calls = []

    def build():
        calls.append(1)
        return random_table(expected_rows, seed=1).numpy()

    if damage == "other_rows":
        with pytest.warns(UserWarning, match="header rows"):
            got = packed.load_or_build("toy", key, expected_rows, build, tmp_path)
    else:
        with pytest.warns(UserWarning, match="rebuilding"):
            got = packed.load_or_build("toy", key, expected_rows, build, tmp_path)
    assert len(calls) == 1 and np.array_equal(got, build())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(packed.read_table(path, key, expected_rows), got)  # the rebuilt file is valid


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    """A write that fails midway leaves the previous file intact and no temporary file behind."""
    key = "d" * 64
    path = packed.cache_path("toy", key, tmp_path)
    good = random_table(4).numpy()
    packed.write_table(path, good, key)

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(packed.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        packed.write_table(path, random_table(4, seed=1).numpy(), key)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert np.array_equal(packed.read_table(path, key, 4), good)


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert packed.cache_dir() == tmp_path / "fastfvae"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert packed.cache_dir() == tmp_path / "home" / ".cache" / "fastfvae"


def test_procedural_key_tracks_the_renderer(monkeypatch):
    key = dsprites.dsprites_source_key(DSprites())
    assert key == dsprites.dsprites_source_key(DSprites())
    monkeypatch.setattr(dsprites, "_SQUARE_SIDE", dsprites._SQUARE_SIDE + 0.1)
    assert dsprites.dsprites_source_key(DSprites()) != key


def _write_npz(path, imgs, classes):
    """An npz like the official file (uint8 imgs, int64 latents_classes with a colour column)."""
    np.savez(path, imgs=imgs, latents_classes=classes)


def test_dsprites_npz_packed_images_in_index_order(tmp_path):
    """A reduced-grid npz with shuffled rows: row i of the table is the image of index i."""
    sizes = (3, 2, 2, 3, 4)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1).reshape(-1, 5)
    order = np.random.default_rng(0).permutation(len(grid))
    grid = grid[order]
    classes = np.concatenate([np.zeros((len(grid), 1), np.int64), grid], axis=1)
    imgs = np.random.default_rng(1).integers(0, 2, (len(grid), 64, 64), dtype=np.uint8)
    path = tmp_path / "small.npz"
    _write_npz(path, imgs, classes)
    dataset = DSprites(path=str(path))
    table = dataset.packed_images(cache_dir=tmp_path / "cache")
    assert table.shape == (len(grid), 512) and table.dtype == torch.uint8
    index = torch.arange(len(dataset))
    expected = dataset.images(dataset.factors_of_index(index))
    assert torch.equal(fastfvae.gather_images(table, index).to(torch.uint8), expected)
    # A changed file gets a new key and a new table.
    imgs[0] ^= 1
    _write_npz(path, imgs, classes)
    changed = DSprites(path=str(path)).packed_images(cache_dir=tmp_path / "cache")
    assert not torch.equal(changed, table)
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_non_binary_images_are_not_packable(tmp_path):
    """A data set whose images hold values other than 0/1 (DSprites refuses such an npz at load;
    a subclass that serves them stands for a future non-binary data set)."""

    class Gray(_SubsetDSprites):
        def images(self, factors):
            return torch.full((factors.shape[0], 1, 64, 64), 255, dtype=torch.uint8)

    with pytest.raises(packed.NotPackable, match="binary"):
        Gray(10).packed_images(cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing written


@pytest.mark.skipif(os.environ.get("FASTFVAE_FULL_DATA") != "1",
                    reason="renders all 737,280 images (~1 min, ~400 MB); set FASTFVAE_FULL_DATA=1")
def test_full_procedural_table(tmp_path):
    dataset = DSprites()
    table = dataset.packed_images(cache_dir=tmp_path)
    assert table.shape == (737280, 512) and table.dtype == torch.uint8
    index = torch.randint(0, 737280, (4096,), generator=torch.Generator().manual_seed(0))
    expected = render_dsprites(dataset.factors_of_index(index))
    assert torch.equal(fastfvae.gather_images(table, index).to(torch.uint8), expected)
    again = dataset.packed_images(cache_dir=tmp_path)  # read back from the cache
    assert torch.equal(again, table)


def test_render_device_and_key_follow_the_device(tmp_path):
    """A procedural table wanted on a GPU is rendered there, under its own key; an npz is never
    rendered (CPU key whatever the device)."""
    procedural = DSprites()
    assert dsprites.render_device(procedural, "cuda:0") == torch.device("cuda:0")
    assert dsprites.render_device(procedural, None) == torch.device("cpu")
    cpu_key = dsprites.dsprites_source_key(procedural, torch.device("cpu"))
    assert dsprites.dsprites_source_key(procedural, torch.device("cuda")) != cpu_key
    classes = np.zeros((1, 6), np.int64)
    path = tmp_path / "one.npz"
    _write_npz(path, np.zeros((1, 64, 64), np.uint8), classes)
    assert dsprites.render_device(DSprites(path=str(path)), "cuda") == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_rendered_rows_equal_cpu_rendered_rows():
    """The table a GPU builds (rendering on the GPU) against the CPU's renders, on a subset."""
    dataset = _SubsetDSprites(20000)
    on_gpu = packed.build_table(dataset, device="cuda")
    on_cpu = packed.build_table(dataset, device="cpu")
    differing = int((np.unpackbits(on_gpu ^ on_cpu)).sum())
    assert differing == 0, f"{differing} of {20000 * 4096} pixels differ between GPU and CPU renders"
