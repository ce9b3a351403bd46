"""The ``data`` group: one training batch of binary 64x64 images, from the bit-packed table
(``fastfvae.gather_images`` on ``DSprites.packed_images()``) vs today's procedural renderer
(``DSprites().images(factors)`` then ``.float()``, what the trainer did per step).

The table here is random bytes of the full data set's size (737,280 rows, 377 MB; 65,536 rows
in quick mode): the timing of a gather does not depend on the pixel values, and a full-size
table makes the row reads as scattered as in training. Fresh random indices every round; the
renderer's factors are computed from them in the untimed setup (which slightly favours it).
The group's D is the pixel count per image, 4096. Target: >= 10x on the CPU.
"""
from __future__ import annotations

import pytest
import torch

from bench import common

OP = "data"
PIXELS = 4096
FULL_ROWS, QUICK_ROWS = 737_280, 65_536
SIZES = [(64, PIXELS), (128, PIXELS), (512, PIXELS)]  # 128: the two batches of a FactorVAE step

_tables: dict = {}


def _table(device: str) -> torch.Tensor:
    rows = FULL_ROWS if common.full_mode() else QUICK_ROWS
    key = (device, rows)
    if key not in _tables:
        g = torch.Generator().manual_seed(0)
        _tables[key] = torch.randint(0, 256, (rows, 512), generator=g, dtype=torch.uint8).to(device)
    return _tables[key]


def _fastfvae(device):
    def make(backend):
        import fastfvae

        table = _table(device)
        return lambda x: (fastfvae.gather_images(table, x["index"], backend=backend),)
    return make


def _renderer():
    from fastfvae.data import DSprites

    dataset = DSprites()
    return lambda x: (dataset.images(x["factors"]).float(),)


def impls(device):
    return common.fastfvae_impls("gather_images", device, _fastfvae(device)) + [
        common.Impl("render-procedural", "baseline", make=_renderer),
    ]


def sizes(device):
    return SIZES if common.full_mode() else SIZES[:1]


@pytest.mark.parametrize("device,direction,size,impl", common.cases(impls, sizes, directions=("forward",)))
def test_data(benchmark, device, direction, size, impl):
    from fastfvae.data import DSprites

    batch, _ = size
    rows = _table(device).shape[0]
    grid = DSprites()

    def make_inputs():
        index = torch.randint(0, rows, (batch,), device=device)
        return {"index": index, "factors": grid.factors_of_index(index.cpu()).to(device)}

    common.run_benchmark(benchmark, op=OP, device=device, direction=direction, size=size, impl=impl,
                         make_inputs=make_inputs, grad_outputs=None, bytes_moved=batch * (512 + 4 * PIXELS))
