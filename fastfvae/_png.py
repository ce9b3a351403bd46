"""Minimal PNG writing (zlib + struct, no image library) and image grids."""
from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import torch


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 array (H, W) (grey) or (H, W, 3) (RGB), 8 bits per sample."""
    pixels = np.ascontiguousarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"pixels: expected uint8 (H, W) or (H, W, 3), got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    colour_type = 0 if pixels.ndim == 2 else 2
    rows = pixels.reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + _chunk(b"IEND", b""))


def write_png(path: str, pixels: np.ndarray) -> None:
    """Write ``pixels`` (see encode_png) to ``path`` atomically."""
    data = encode_png(pixels)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def image_grid(images: torch.Tensor, ncol: int, pad: int = 2, background: float = 0.5) -> np.ndarray:
    """Tile images (N, C, H, W) with values in [0, 1] into a uint8 grid, row-major, ``ncol``
    per row, separated by ``pad`` pixels of ``background``. C = 1 gives (H', W'), C = 3 (H', W', 3)."""
    images = images.detach().float().clamp(0, 1).cpu()
    n, channels, height, width = images.shape
    nrow = (n + ncol - 1) // ncol
    grid = torch.full((channels, nrow * (height + pad) + pad, ncol * (width + pad) + pad), background)
    for k in range(n):
        r, c = divmod(k, ncol)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        grid[:, top: top + height, left: left + width] = images[k]
    pixels = (grid * 255).round().to(torch.uint8).numpy()
    return pixels[0] if channels == 1 else pixels.transpose(1, 2, 0)
