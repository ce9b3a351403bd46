"""Trained models shipped with the package: weights, a JSON card, loadable in one line.

    >>> import fastfvae.pretrained as pretrained
    >>> pretrained.list()
    ['factorvae-dsprites']
    >>> vae = pretrained.load("factorvae-dsprites")          # fastfvae.models.VAE, eval mode
    >>> mu, logvar = vae.encoder(images)                      # images (B, 1, 64, 64) in [0, 1]

Each model is a folder ``fastfvae/pretrained_models/<name>/`` holding

    weights.pt  the VAE's state dict (encoder and decoder only: no discriminator, no optimiser
                state), saved by torch.save and read with ``weights_only=True``, so a file that
                carries code is refused instead of run
    card.json   what the model is and how it was made: the training options, steps, device and
                threads, wall time, commit, the metric battery with its protocol and seed, the KL
                decomposition, the training curves, and the sha256 of weights.pt

``load`` checks the weights file's sha256 against the card before reading it. The cards are
written by ``scripts/export_reference.py`` from a run folder; README.md shows the reference
model's traversals and metrics, and docs/DESIGN.md §13 says how it was trained.
"""
from __future__ import annotations

import builtins
import hashlib
import json
import os
from typing import Optional

import torch

from fastfvae.models import VAE

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained_models")
CARD_NAME = "card.json"
WEIGHTS_NAME = "weights.pt"
CARD_FORMAT = "fastfvae-model-card-1"


class PretrainedError(ValueError):
    """A pretrained model that is unknown, incomplete or whose weights do not match its card."""


def list(root: Optional[str] = None) -> builtins.list[str]:  # noqa: A001 (the issue's API name)
    """Names of the shipped models (folders of ``root`` holding a card), sorted."""
    root = ROOT if root is None else root
    if not os.path.isdir(root):
        return []
    return sorted(name for name in os.listdir(root) if os.path.isfile(os.path.join(root, name, CARD_NAME)))


def card(name: str, root: Optional[str] = None) -> dict:
    """The model's card (card.json) as a dict; PretrainedError for an unknown name."""
    folder = _folder(name, root)
    path = os.path.join(folder, CARD_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise PretrainedError(f"pretrained model {name!r}: cannot read its card {path}: {error}") from None
    if not isinstance(value, dict) or value.get("format") != CARD_FORMAT:
        raise PretrainedError(f"pretrained model {name!r}: {path} is not a fastfvae model card (format {CARD_FORMAT})")
    return value


def weights_path(name: str, root: Optional[str] = None) -> str:
    """The path of the model's weights file."""
    return os.path.join(_folder(name, root), WEIGHTS_NAME)


def sha256(path: str) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load(name: str, device="cpu", dtype: torch.dtype = torch.float32, root: Optional[str] = None) -> VAE:
    """The model's VAE (``fastfvae.models.VAE``: ``encoder``, ``decoder``) in eval mode on
    ``device`` in ``dtype``. Refuses (PretrainedError) an unknown name (listing the available
    ones), a weights file whose sha256 differs from the card's, and a file that is not a plain
    state dict (torch.load with weights_only=True: no code runs)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
    info = card(name, root)
    path = weights_path(name, root)
    if not os.path.isfile(path):
        raise PretrainedError(f"pretrained model {name!r}: its weights file {path} is missing")
    actual = sha256(path)
    if actual != info.get("weights_sha256"):
        raise PretrainedError(f"pretrained model {name!r}: {path} has sha256 {actual}, its card says "
                              f"{info.get('weights_sha256')}: the file was changed or damaged")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError and others for foreign files
        raise PretrainedError(f"pretrained model {name!r}: {path} is not a plain state dict: {error}") from None
    model = info["model"]
    vae = VAE(model["z_dim"], model["channels"])
    try:
        vae.load_state_dict(state)
    except (RuntimeError, TypeError) as error:
        raise PretrainedError(f"pretrained model {name!r}: its weights do not fit its card's model: {error}") from None
    return vae.to(device=device, dtype=dtype).eval()


def _folder(name: str, root: Optional[str]) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a model name (str), got {name!r}")
    root = ROOT if root is None else root
    available = list(root)
    if name not in available:
        raise PretrainedError(f"no pretrained model named {name!r}; available: {', '.join(available) or 'none'}")
    return os.path.join(root, name)
