"""gather_color_images: a batch of 8-bit images from a uint8 table, as floats in [0, 1] (the
correctly rounded value / 255), NaN images for bad indices, on every present device."""
from __future__ import annotations

import pytest
import torch

from fastfvae import gather_color_images


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_gather_color_images_converts_and_marks_bad_indices(dtype, device):
    table = torch.randint(0, 256, (50, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    index = torch.tensor([0, 49, 7, 7, -1, 50, 10 ** 9, 3])
    out = gather_color_images(table.to(device), index.to(device), dtype).cpu()
    assert out.dtype == dtype and out.shape == (8, 3, 64, 64) and out.is_contiguous()
    good = torch.tensor([True, True, True, True, False, False, False, True])
    expected = (table[index[good]].double() / 255).to(dtype)  # the correctly rounded quotient
    torch.testing.assert_close(out[good], expected, rtol=0, atol=0 if dtype != torch.bfloat16 else 4e-3)
    assert bool(out[~good].isnan().all())
    with pytest.raises(TypeError, match="table: expected dtype torch.uint8"):
        gather_color_images(table.float(), index)
    with pytest.raises(TypeError, match="index: expected dtype"):
        gather_color_images(table, index.float())
    with pytest.raises(ValueError, match="index: expected a 1-D"):
        gather_color_images(table, index[None])
