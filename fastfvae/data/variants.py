"""disentanglement_lib's procedural variants of dSprites: dSprites without the shape factor,
Color-, Noisy- and Scream-dSprites (Locatello et al. 2019, ``data/ground_truth/dsprites.py``).

Each wraps a ``DSprites`` (procedural, or the official npz with ``path``) and keeps its five
factors (``dsprites_noshape``: four). The colour variants draw fresh random numbers for every
observation, so the same factors give different images (as in disentanglement_lib); ``seed``
fixes the draws of ``images``. Their rules, on a binary sprite s (0/1, per pixel), as functions
of the draws (``color_rule``, ``noisy_rule``, ``scream_rule``), output 3 channels in [0, 1]:

    color:  x = s * c,                    c ~ U(0.5, 1)^3, one colour per image (black background)
    noisy:  x = min(s + u, 1),            u ~ U(0, 1) per pixel and channel
    scream: b = (P + t) / 2,  x = s ? 1 - b : b,
            P the 64x64 patch of the painting at rows r.., columns q.., r ~ U{0..H-65},
            q ~ U{0..W-65}, t ~ U(0, 1)^3 one tint per image; the painting is the user's image
            file shrunk with Pillow's ``thumbnail((350, 274))`` (aspect kept), value / 255.

(disentanglement_lib draws, per Scream image, r, then q, then t; ``randint(0, H - 64)`` excludes
H - 64, hence H-65.) ``dsprites_noshape`` exposes scale, orientation, pos_x, pos_y and draws the
shape of each observation uniformly (its ``DSprites([2, 3, 4, 5])``).

On the training device the variants reuse dSprites' bit-packed table (``packed_images``) and
apply ``device_transform`` to each gathered batch with the device's default generator.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from fastfvae.data.base import GroundTruthDataset
from fastfvae.data.dsprites import DSprites

SCREAM_SIZE = (350, 274)  # thumbnail bound (width, height) of the painting
SCREAM_SOURCE = "https://upload.wikimedia.org/wikipedia/commons/f/f4/The_Scream.jpg"
PATCH = 64


# ---------------------------------------------------------------------------------------------
# The rules, as functions of the random draws (n images; s: float (n, 1, 64, 64) of 0/1)
# ---------------------------------------------------------------------------------------------
def color_rule(sprite: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """sprite (n, 1, 64, 64), color (n, 3) in [0.5, 1) -> (n, 3, 64, 64) = sprite * color."""
    return sprite * color[:, :, None, None]


def noisy_rule(sprite: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """sprite (n, 1, 64, 64), noise (n, 3, 64, 64) in [0, 1) -> min(sprite + noise, 1)."""
    return (sprite + noise).clamp_max(1.0)


def scream_rule(sprite: torch.Tensor, painting: torch.Tensor, row: torch.Tensor, col: torch.Tensor,
                tint: torch.Tensor) -> torch.Tensor:
    """sprite (n, 1, 64, 64); painting (3, H, W) in [0, 1]; row, col (n,) patch corners; tint
    (n, 3) -> (n, 3, 64, 64): background (patch + tint) / 2, inverted where the sprite is on."""
    offsets = torch.arange(PATCH, device=painting.device)
    rows = (row[:, None] + offsets)[:, None, :, None]            # (n, 1, 64, 1)
    cols = (col[:, None] + offsets)[:, None, None, :]            # (n, 1, 1, 64)
    channel = torch.arange(3, device=painting.device)[None, :, None, None]
    background = (painting[channel, rows, cols] + tint[:, :, None, None]) / 2
    return torch.where(sprite == 1, 1 - background, background)


def load_painting(path) -> torch.Tensor:
    """The Scream image file -> float32 (3, H, W) in [0, 1], shrunk to fit 350x274 (aspect kept)."""
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    hint = (f"scream_dsprites needs the painting's image: pass its path with --scream-image PATH "
            f"(fastfvae.data.load('scream_dsprites', scream_image=...)); the painting: {SCREAM_SOURCE}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"scream_dsprites: image file {path!r} does not exist. {hint}")
    try:
        with Image.open(path) as image:
            image.thumbnail(SCREAM_SIZE)  # on the file's image, as disentanglement_lib (JPEG draft included)
            image = image.convert("RGB")
            pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
            pixels = pixels.reshape(image.height, image.width, 3)
    except (UnidentifiedImageError, OSError) as damaged:
        raise ValueError(f"scream_dsprites: {path!r} is not a readable image ({damaged}). {hint}") from None
    if image.height <= PATCH or image.width <= PATCH:
        raise ValueError(f"scream_dsprites: the image {path!r} is {image.width}x{image.height} after the "
                         f"350x274 thumbnail; it must exceed 64x64")
    return pixels.permute(2, 0, 1).float() / 255.0


# ---------------------------------------------------------------------------------------------
# The data sets
# ---------------------------------------------------------------------------------------------
class _DSpritesWrapper(GroundTruthDataset):
    """Common part: the wrapped ``DSprites`` (``self.base``), its table and its indexing."""

    factor_names = DSprites.factor_names
    # Each observation is drawn at random given its factors (colour, noise, patch, hidden shape):
    # the metrics' encode-once code table (one code per grid point) does not apply.
    random_observations = True

    def __init__(self, path=None, *, seed: int = 0):
        self.base = DSprites(path=path)
        self.path = self.base.path
        self.factor_sizes = self.base.factor_sizes
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def packed_images(self, device=None, *, cache_dir=None) -> torch.Tensor:
        """The wrapped dSprites' bit-packed table (see ``DSprites.packed_images``)."""
        return self.base.packed_images(device, cache_dir=cache_dir)

    def sprites(self, factors: torch.Tensor) -> torch.Tensor:
        """float32 (n, 1, 64, 64) 0/1 sprites of full dSprites factors, on the factors' device."""
        return self.base.images(factors).float()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base!r}, seed={self.seed})"


class _ColouredDSprites(_DSpritesWrapper):
    """Base of Color/Noisy/Scream-dSprites: 5 factors, 3 channels, random per observation."""

    @property
    def num_channels(self) -> int:
        return 3

    def draws(self, n: int, generator: Optional[torch.Generator], device) -> tuple:  # pragma: no cover
        raise NotImplementedError

    def rule(self, sprite: torch.Tensor, *draws) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def images(self, factors: torch.Tensor) -> torch.Tensor:
        """factors (n, 5) -> float32 (n, 3, 64, 64) in [0, 1] on the factors' device; the random
        numbers come from ``self.generator`` (CPU)."""
        factors = self.check_factors(factors)
        draws = [d.to(factors.device) for d in self.draws(factors.shape[0], self.generator, "cpu")]
        return self.rule(self.sprites(factors), *draws)

    def device_transform(self, sprite: torch.Tensor) -> torch.Tensor:
        """A gathered batch of sprites (n, 1, 64, 64) float -> the variant's images, drawing on
        the batch's device with its default generator (no host work)."""
        return self.rule(sprite, *self.draws(sprite.shape[0], None, sprite.device))

    def __getitem__(self, i: int):
        image, factors = self.base[i]
        return self.rule(image[None].float(), *self.draws(1, self.generator, "cpu"))[0], factors


class ColorDSprites(_ColouredDSprites):
    name = "color_dsprites"

    def draws(self, n, generator, device):
        return (0.5 + 0.5 * torch.rand((n, 3), generator=generator, device=device),)

    def rule(self, sprite, color):
        return color_rule(sprite, color)


class NoisyDSprites(_ColouredDSprites):
    name = "noisy_dsprites"

    def draws(self, n, generator, device):
        return (torch.rand((n, 3, PATCH, PATCH), generator=generator, device=device),)

    def rule(self, sprite, noise):
        return noisy_rule(sprite, noise)


class ScreamDSprites(_ColouredDSprites):
    name = "scream_dsprites"

    def __init__(self, path=None, *, scream_image=None, seed: int = 0):
        if scream_image is None:
            raise ValueError("scream_dsprites needs the painting's image: pass its path with --scream-image "
                             f"PATH (fastfvae.data.load('scream_dsprites', scream_image=...)); the painting: "
                             f"{SCREAM_SOURCE}")
        super().__init__(path, seed=seed)
        self.painting = load_painting(scream_image)
        self._paintings = {}

    def _painting_on(self, device) -> torch.Tensor:
        device = torch.device(device)
        if device not in self._paintings:
            self._paintings[device] = self.painting.to(device)
        return self._paintings[device]

    def draws(self, n, generator, device):
        _, height, width = self.painting.shape
        row = torch.randint(height - PATCH, (n,), generator=generator, device=device)
        col = torch.randint(width - PATCH, (n,), generator=generator, device=device)
        tint = torch.rand((n, 3), generator=generator, device=device)
        return row, col, tint

    def rule(self, sprite, row, col, tint):
        return scream_rule(sprite, self._painting_on(sprite.device), row, col, tint)


class DSpritesNoShape(_DSpritesWrapper):
    """dSprites with the shape hidden: factors scale, orientation, pos_x, pos_y; each observation
    draws its shape uniformly from ``self.generator``. ``len`` counts every image (737,280)."""

    name = "dsprites_noshape"

    def __init__(self, path=None, *, seed: int = 0):
        super().__init__(path, seed=seed)
        self.factor_names = DSprites.factor_names[1:]
        self.factor_sizes = self.base.factor_sizes[1:]

    def __len__(self) -> int:
        return len(self.base)

    def images(self, factors: torch.Tensor) -> torch.Tensor:
        """factors (n, 4) -> uint8 (n, 1, 64, 64) 0/1, the shape drawn for each row."""
        factors = self.check_factors(factors)
        shape = torch.randint(self.base.factor_sizes[0], (factors.shape[0], 1), generator=self.generator)
        return self.base.images(torch.cat([shape.to(factors.device), factors], dim=1))

    def __getitem__(self, i: int):
        image, factors = self.base[i]
        return image, factors[1:]
