"""The ``color_data`` group: one training batch of 8-bit colour 64x64 images (Shapes3D, MPI3D,
Cars3D), from the uint8 table on the training device (``fastfvae.gather_color_images`` on
``TableDataset.image_table()``) vs what a loader without it does: index a float32 table held on
the CPU (the images already divided by 255, as disentanglement_lib holds Shapes3D) and copy the
batch to the device.

The tables are random bytes (the timing of a gather does not depend on the pixel values) of
32,768 rows in full mode (the float table is then 1.6 GB; the real sets have 17,568 to 1,036,800
rows, too large to hold as floats twice on a benchmark machine) and 8,192 in quick mode. Fresh
random indices every round. The group's D is the value count per image, 3 * 4096 = 12288.
Target: >= 10x on a GPU, where the baseline pays the host gather and the copy; on the CPU both
are a gather and the ratio is the uint8 table's smaller reads (a 4x smaller table).
"""
from __future__ import annotations

import pytest
import torch

from bench import common

OP = "color_data"
VALUES = 3 * 4096
FULL_ROWS, QUICK_ROWS = 32_768, 8_192
SIZES = [(64, VALUES), (128, VALUES), (512, VALUES)]  # 128: the two batches of a FactorVAE step

_tables: dict = {}


def _tables_for(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 table on ``device``, float32 table on the CPU), the same images."""
    rows = FULL_ROWS if common.full_mode() else QUICK_ROWS
    key = (device, rows)
    if key not in _tables:
        g = torch.Generator().manual_seed(0)
        table = torch.randint(0, 256, (rows, 3, 64, 64), generator=g, dtype=torch.uint8)
        _tables[key] = (table.to(device), table.float().div_(255))
    return _tables[key]


def _fastfvae(device):
    def make():
        import fastfvae

        table, _ = _tables_for(device)
        return lambda x: (fastfvae.gather_color_images(table, x["index"]),)
    return make


def _float_on_cpu(device):
    def make():
        _, floats = _tables_for(device)
        return lambda x: (floats[x["index_cpu"]].to(device, non_blocking=True),)
    return make


def impls(device):
    return [common.Impl("fastfvae[torch]", "fastfvae", make=_fastfvae(device)),
            common.Impl("index-float-cpu", "baseline", make=_float_on_cpu(device))]


def sizes(device):
    return SIZES if common.full_mode() else SIZES[:1]


@pytest.mark.parametrize("device,direction,size,impl", common.cases(impls, sizes, directions=("forward",)))
def test_color_data(benchmark, device, direction, size, impl):
    batch, _ = size
    rows = _tables_for(device)[0].shape[0]

    def make_inputs():
        index = torch.randint(0, rows, (batch,), device=device)
        return {"index": index, "index_cpu": index.cpu()}

    common.run_benchmark(benchmark, op=OP, device=device, direction=direction, size=size, impl=impl,
                         make_inputs=make_inputs, grad_outputs=None, bytes_moved=batch * (VALUES + 4 * VALUES))
