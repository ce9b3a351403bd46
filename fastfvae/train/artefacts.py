"""Files a run leaves besides its checkpoint and log: images (Pillow) and summary.json.

reconstructions.png  8 inputs (top row) over their reconstructions (bottom row)
traversals.png       one row per latent dimension: the first input's mean code with that
                     dimension swept over linspace(-limit, limit)
traversals.gif       animated: one row per latent dimension, one column per input (3 inputs);
                     frame k sets that row's dimension to the k-th value of the sweep -limit ->
                     +limit -> -limit (as 1Konny/FactorVAE's and disentangling-vae's GIFs)
curves.png           one panel per logged series over steps: the step's loss terms (loss, recon,
                     KL, TC estimate, discriminator loss and accuracy for FactorVAE) and the
                     minibatch TC estimate when --log-tc-every is set; drawn with PIL.ImageDraw
summary.json         the run's result (written atomically: temp file + os.replace): final
                     terms; rates (steps_per_s, session_steps, session_time_s: this session;
                     train_time_s, run_steps_per_s: every session); metrics (evaluated at this
                     step); metrics_history (every evaluation of every session, from the log's
                     "eval" rows: [{"step", "metrics"}], latest first); images and images_step
                     (the step the images on disk show; older than step when a resumed session
                     did not redraw them)

Every write goes to ``<name>.tmp-<pid>`` first and is renamed over the real file, so a crash
leaves the previous file intact (a full disk is a DiskFullError naming the file, and the temp
file is removed); the trainer removes stale ``*.tmp-*`` files when it starts.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image, ImageDraw

from fastfvae.models import VAE
from fastfvae.train.errors import writing


def temp_path(path: str) -> str:
    """The temp file a write of ``path`` goes through (pattern ``*.tmp-*``, see the module docstring)."""
    return f"{path}.tmp-{os.getpid()}"


@contextlib.contextmanager
def atomic_write(path: str) -> Iterator[str]:
    """Yields the temp path to write; renames it over ``path`` after the block. A full disk
    becomes a DiskFullError naming ``path``; on any failure the temp file is removed (it would
    hold space) and ``path`` keeps its previous content."""
    tmp = temp_path(path)
    try:
        with writing(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, value: dict) -> None:
    """``value`` as indented JSON in ``path``, atomically."""
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
        f.flush()  # a full disk fails here, inside the block, not when the file is closed


def image_grid(images: torch.Tensor, ncol: int, pad: int = 2, background: float = 0.5) -> np.ndarray:
    """Tile images (N, C, H, W) with values in [0, 1] into a uint8 grid, row-major, ``ncol``
    per row, separated (and framed) by ``pad`` pixels of ``background``. Returns (H', W') for
    C = 1 and (H', W', 3) for C = 3, H' = nrow * (H + pad) + pad, W' = ncol * (W + pad) + pad."""
    images = images.detach().float().clamp(0, 1).cpu()
    n, channels, height, width = images.shape
    nrow = -(-n // ncol)
    blank = torch.full((nrow * ncol - n, channels, height, width), background)
    cells = F.pad(torch.cat([images, blank]), (pad, 0, pad, 0), value=background)  # frame top/left
    grid = rearrange(cells, "(r c) ch h w -> ch (r h) (c w)", c=ncol)
    grid = F.pad(grid, (0, pad, 0, pad), value=background)                       # close bottom/right
    pixels = (grid * 255).round().to(torch.uint8).numpy()
    return pixels[0] if channels == 1 else rearrange(pixels, "ch h w -> h w ch")


def write_png(path: str, pixels: np.ndarray) -> None:
    """Write uint8 ``pixels`` (H, W) grey or (H, W, 3) RGB to ``path`` as PNG, atomically."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"pixels: expected uint8 (H, W) or (H, W, 3), got {pixels.dtype} {pixels.shape}")
    with atomic_write(path) as tmp:
        Image.fromarray(np.ascontiguousarray(pixels)).save(tmp, format="PNG")


def traversal_images(vae: VAE, mu: torch.Tensor, n_values: int = 9, limit: float = 2.5) -> torch.Tensor:
    """(z_dim * n_values, C, 64, 64) decoded images in [0, 1]: row d varies dimension d of ``mu`` (1, D)."""
    d = mu.shape[1]
    values = torch.linspace(-limit, limit, n_values, device=mu.device)
    z = mu.float().repeat(d * n_values, 1)
    for dim in range(d):
        z[dim * n_values:(dim + 1) * n_values, dim] = values
    with torch.no_grad():
        return torch.sigmoid(vae.decoder(z)).float().cpu()


def write_images(vae: VAE, dataset, device: torch.device, out: str, seed: int = 0,
                 n_recon: int = 8, n_values: int = 9, limit: float = 2.5) -> dict:
    """reconstructions.png, traversals.png and traversals.gif (module docstring); returns {name: path}."""
    generator = torch.Generator().manual_seed(seed)
    x = dataset.images(dataset.sample_factors(n_recon, generator)).to(device).float()
    with torch.no_grad():
        mu, _ = vae.encoder(x)
        recon = torch.sigmoid(vae.decoder(mu.float())).float()
    paths = {"reconstructions": os.path.join(out, "reconstructions.png"),
             "traversals": os.path.join(out, "traversals.png"),
             "traversals_gif": os.path.join(out, "traversals.gif")}
    write_png(paths["reconstructions"], image_grid(torch.cat([x, recon]).cpu(), ncol=n_recon))
    write_png(paths["traversals"], image_grid(traversal_images(vae, mu[:1], n_values, limit), ncol=n_values))
    write_gif(paths["traversals_gif"], traversal_gif_frames(vae, mu[:3], n_values, limit))
    return paths


def traversal_gif_frames(vae: VAE, mu: torch.Tensor, n_values: int = 9, limit: float = 2.5) -> list[np.ndarray]:
    """Frames of traversals.gif (module docstring). mu: (n, D) mean codes of the n columns.
    Each frame: image_grid of D rows x n columns."""
    n, d = mu.shape
    values = torch.linspace(-limit, limit, n_values, device=mu.device)
    sweep = torch.cat([values, values.flip(0)[1:-1]])                       # (F,) there and back
    z = mu.float()[None, None].expand(len(sweep), d, n, d).clone()           # (F, row, column, D)
    rows = torch.arange(d, device=mu.device)
    z[:, rows, :, rows] = sweep[None, :, None].expand(d, len(sweep), n)    # row r sets dimension r
    with torch.no_grad():
        images = torch.sigmoid(vae.decoder(z.reshape(-1, d))).float().cpu()
    frames = rearrange(images, "(f k) c h w -> f k c h w", f=len(sweep))
    return [image_grid(frame, ncol=n) for frame in frames]


def write_gif(path: str, frames: list[np.ndarray], frame_ms: int = 120) -> None:
    """An endlessly looping animated GIF of uint8 (H, W) or (H, W, 3) ``frames``, atomically."""
    images = [Image.fromarray(np.ascontiguousarray(frame)) for frame in frames]
    with atomic_write(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0)


def read_series(log_path: str) -> dict[str, tuple[list[int], list[float]]]:
    """{name: (steps, values)} of every numeric series in log.jsonl: the training rows' terms and
    the "tc" events' estimates (rows cut by a crash are skipped)."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    skip = {"step", "steps_per_s", "time_s", "event"}
    with open(log_path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("event") not in (None, "tc"):
                continue
            for name, value in row.items():
                if name not in skip and isinstance(value, (int, float)) and np.isfinite(value):
                    steps, values = series.setdefault(name, ([], []))
                    steps.append(int(row["step"]))
                    values.append(float(value))
    return series


def read_events(log_path: str) -> dict[str, list[dict]]:
    """{event: [rows]} of log.jsonl's event rows ("eval", "tc", "images", "resume"), in log
    order (rows cut by a crash are skipped)."""
    events: dict[str, list[dict]] = {}
    with open(log_path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("event"), str) and isinstance(row.get("step"), int):
                events.setdefault(row["event"], []).append(row)
    return events


def earlier_records(out: str, log_path: Optional[str], summary: dict, earlier_summary: Optional[dict]) -> dict:
    """What summary.json keeps of every session of a run: ``metrics_history``, each evaluation
    with its step, latest first (the log's "eval" rows); and, when ``summary`` (this session's)
    has no images, the images on disk with the step they show (``images_step``: from the log's
    last "images" row, else from ``earlier_summary``, summary.json as an earlier version left it)."""
    log = read_events(log_path) if log_path and os.path.exists(log_path) else {}
    kept: dict = {}
    history = {row["step"]: row["metrics"] for row in log.get("eval", []) if "metrics" in row}
    if history:
        kept["metrics_history"] = [{"step": step, "metrics": history[step]} for step in sorted(history, reverse=True)]
    if "images" in summary:
        return kept
    earlier = earlier_summary or {}
    if log.get("images"):
        names, step = log["images"][-1].get("files", {}), log["images"][-1]["step"]
    elif isinstance(earlier.get("images"), dict):
        names = {name: os.path.basename(path) for name, path in earlier["images"].items()}
        step = earlier.get("images_step", earlier.get("step"))
    else:
        names, step = {}, None
    paths = {name: os.path.join(out, file) for name, file in names.items()}
    paths = {name: path for name, path in paths.items() if os.path.exists(path)}
    if paths:
        kept["images"], kept["images_step"] = paths, step
    return kept


def write_curves(path: str, series: dict[str, tuple[list[int], list[float]]], columns: int = 3,
                 panel: tuple[int, int] = (300, 170)) -> None:
    """curves.png: one line plot per series (a grid of ``columns`` panels per row), atomically."""
    width, height = panel
    rows = max(1, -(-len(series) // columns))
    image = Image.new("RGB", (columns * width, rows * height), "white")
    draw = ImageDraw.Draw(image)
    for k, (name, (steps, values)) in enumerate(series.items()):
        top, left = (k // columns) * height, (k % columns) * width
        _draw_panel(draw, (left, top, left + width, top + height), name, steps, values)
    with atomic_write(path) as tmp:
        image.save(tmp, format="PNG")


def _draw_panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], name: str,
                steps: list[int], values: list[float]) -> None:
    """Title, frame, y range labels, step range labels and the polyline of one series."""
    x0, y0, x1, y1 = box[0] + 50, box[1] + 18, box[2] - 10, box[3] - 22   # plotting area
    draw.rectangle((x0, y0, x1, y1), outline="grey")
    draw.text((box[0] + 50, box[1] + 3), name, fill="black")
    low, high = min(values), max(values)
    span, step_span = (high - low) or 1.0, (steps[-1] - steps[0]) or 1
    draw.text((box[0] + 2, y0), f"{high:.4g}", fill="black")
    draw.text((box[0] + 2, y1 - 10), f"{low:.4g}", fill="black")
    draw.text((x0, y1 + 4), str(steps[0]), fill="black")
    draw.text((x1 - 40, y1 + 4), str(steps[-1]), fill="black")
    points = [(x0 + (s - steps[0]) / step_span * (x1 - x0), y1 - (v - low) / span * (y1 - y0))
              for s, v in zip(steps, values)]
    if len(points) == 1:
        draw.ellipse((points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2), fill="navy")
    else:
        draw.line(points, fill="navy", width=2)
