"""Evaluation of a trained VAE: the disentanglement metrics on its encoder mean, and the
per-dimension KL. Used at the end of a run, every ``eval_every`` steps, and by ``fastfvae evaluate``."""
from __future__ import annotations

from typing import Callable

import torch

from fastfvae import metrics
from fastfvae.models import VAE


def _batch(part: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images -> float32 on device, channels_last: oneDNN's convolutions run the paper's
    encoder ~1.3-1.7x faster in it on a CPU (measured on 4,096 dSprites images)."""
    return part.to(device).float().contiguous(memory_format=torch.channels_last)


def encode_chunk(device: torch.device) -> int:
    """Images per encoder call: on a CPU 128, so activations stay under glibc's 32 MiB mmap cap
    (fastfvae/memory.py; a 2-core CPU encodes 128 at a time as fast as 1024); 4096 on a GPU."""
    return 128 if torch.device(device).type == "cpu" else 4096


def encoder_mean_fn(vae: VAE, device: torch.device, chunk: int | None = None) -> Callable:
    """uint8 images (n, C, 64, 64) -> encoder means (n, z_dim) float32 on ``device``
    (``chunk`` images per encoder call, default encode_chunk(device))."""
    chunk = chunk or encode_chunk(device)

    def encode(images: torch.Tensor) -> torch.Tensor:
        outs = []
        with torch.no_grad():
            for part in images.split(chunk):
                mu, _ = vae.encoder(_batch(part, device))
                outs.append(mu.float())
        return torch.cat(outs) if outs else torch.empty(0, vae.z_dim, device=device)
    return encode


def encoder_gaussian_fn(vae: VAE, device: torch.device, chunk: int | None = None) -> Callable:
    """uint8 images -> (mu, logvar), each (n, z_dim) float32 (``chunk``: as encoder_mean_fn)."""
    chunk = chunk or encode_chunk(device)

    def encode(images: torch.Tensor):
        mus, logvars = [], []
        with torch.no_grad():
            for part in images.split(chunk):
                mu, logvar = vae.encoder(_batch(part, device))
                mus.append(mu.float())
                logvars.append(logvar.float())
        return torch.cat(mus), torch.cat(logvars)
    return encode


def metrics_preset(preset: str, device: torch.device) -> str:
    """"auto": the metrics' "fast" preset on a CPU (fewer votes, same protocol: ~40 s for the
    paper's encoder on a 2-core CPU), disentanglement_lib's "default" on a GPU."""
    if preset == "auto":
        return "default" if device.type == "cuda" else "fast"
    return preset


def evaluate_metrics(vae: VAE, dataset, device: torch.device, seed: int = 0, preset: str = "auto",
                     names="all") -> dict:
    """fastfvae.metrics.evaluate on the encoder mean (the VAE is in eval mode meanwhile).
    names: "all" or a list of metric names (fastfvae.metrics.METRICS)."""
    was_training = vae.training
    vae.eval()
    try:
        return metrics.evaluate(encoder_mean_fn(vae, device), dataset, seed=seed,
                                preset=metrics_preset(preset, device), metrics=names)
    finally:
        vae.train(was_training)


def kl_per_dimension(vae: VAE, dataset, device: torch.device, seed: int, n: int = 512) -> dict:
    """KL(q(z_d|x) || N(0, 1)) per latent dimension, averaged over ``n`` random images, and the
    number of active dimensions (KL > 0.1 nats)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = dataset.images(dataset.sample_factors(n, gen)).to(device).float()
        mu, logvar = vae.encoder(x)
        mu, logvar = mu.float(), logvar.float()
        kl_dim = 0.5 * (mu ** 2 + logvar.exp() - logvar - 1).mean(0)
    return {"kl_per_dim": [round(v, 4) for v in kl_dim.tolist()], "active_dims": int((kl_dim > 0.1).sum())}
