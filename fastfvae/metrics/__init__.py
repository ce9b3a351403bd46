"""Disentanglement metrics on ground-truth data sets: the FactorVAE metric, the beta-VAE metric, MIG.

Each metric takes ``encode`` (observations (n, ...) -> floating (n, D) tensor, e.g. the encoder
mean; it may run on a GPU, the metric then reduces there) and a data set with ``factor_sizes``,
``sample_factors(n, generator)`` and ``images(factors)`` (fastfvae.data.DSprites, or any object with
that interface: the tests use one whose observations are the factors themselves; the interface and
what ``encode`` receives, uint8 for dSprites, are in ``fastfvae.data.GroundTruthData``). A seed (or a CPU
``torch.Generator``) makes results reproducible. Every result is a dict with the scores, every
protocol parameter used, the number of images encoded and the seconds taken.

Protocols follow disentanglement_lib (defaults included); each module's docstring states the
protocol and where public implementations disagree. ``evaluate`` runs all three; its ``"fast"``
preset keeps the protocol and draws fewer votes (suite.py gives both presets' costs).
"""
from fastfvae.metrics.beta_vae import beta_vae_metric
from fastfvae.metrics.factor_vae import factor_vae_metric
from fastfvae.metrics.mig import mig
from fastfvae.metrics.suite import PRESETS, evaluate

__all__ = ["PRESETS", "beta_vae_metric", "evaluate", "factor_vae_metric", "mig"]
