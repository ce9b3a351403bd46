"""Disentanglement metrics on ground-truth data sets: disentanglement_lib's battery (FactorVAE,
beta-VAE, MIG, DCI, SAP, modularity/explicitness, the unsupervised scores).

Each metric takes ``encode`` (observations (n, ...) -> floating (n, D) tensor, e.g. the encoder
mean; it may run on a GPU, the metric then reduces there) and a data set with ``factor_sizes``,
``sample_factors(n, generator)`` and ``images(factors)`` (fastfvae.data.DSprites, or any object with
that interface: the tests use one whose observations are the factors themselves; the interface and
what ``encode`` receives, uint8 for dSprites, are in ``fastfvae.data.GroundTruthData``). A seed (or a CPU
``torch.Generator``) makes results reproducible. Every result is a dict with the scores, every
protocol parameter used, the seed, the number of images encoded and the seconds taken.

Protocols follow disentanglement_lib (defaults included); each module's docstring states the
protocol and where we choose something it leaves undefined. The classifiers are scikit-learn's,
as there. ``evaluate`` runs any of them with one seed; with disentanglement_lib's sizes it reads
the codes from an encode-once table of the data set's factor grid (code_table.py).
"""
from fastfvae.metrics.beta_vae import beta_vae_metric
from fastfvae.metrics.code_table import CodeTable, encode_code_table
from fastfvae.metrics.dci import dci
from fastfvae.metrics.factor_vae import factor_vae_metric
from fastfvae.metrics.mig import mig
from fastfvae.metrics.modularity_explicitness import modularity_explicitness
from fastfvae.metrics.sap import sap
from fastfvae.metrics.suite import METRICS, PRESETS, evaluate, format_table
from fastfvae.metrics.unsupervised import unsupervised_scores

__all__ = [
    "METRICS", "PRESETS", "CodeTable", "beta_vae_metric", "dci", "encode_code_table", "evaluate",
    "factor_vae_metric", "format_table", "mig", "modularity_explicitness", "sap", "unsupervised_scores",
]
