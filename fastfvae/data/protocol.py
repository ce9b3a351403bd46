"""The ground-truth data set interface, as typing.Protocols: what ``fastfvae.metrics``,
``fastfvae.diagnostics`` and ``fastfvae.train`` call on a data set, and what they pass to
``encode``. Any object with these members works (no base class needed); ``DSprites`` is one.

    from fastfvae.data import GroundTruthData
    isinstance(my_dataset, GroundTruthData)   # True when the members exist (not their types)

The metrics need ``GroundTruthData``; ``fastfvae train`` needs ``TrainingData`` (one more member
and a fixed image size). The contract, member by member:

``factor_sizes``: tuple of K ints >= 1, the number of values of each generative factor.

``sample_factors(n, generator)``: n factor combinations drawn with ``generator`` (a CPU
    ``torch.Generator`` in the metrics and the trainer), as an integer tensor (n, K) of class
    indices with 0 <= factors[:, k] < factor_sizes[k]. int64 (LongTensor) is the convention;
    the metrics accept any integer dtype and move the factors to the CPU.

``images(factors)``: the observations for a factor batch, a tensor (n, ...), first dimension n.
    ``factors`` is int64 (n, K) on the CPU in the metrics (or on ``data_device`` when a metric is
    given one) and on the training device in the trainer, so a renderer can run where the model
    runs. Any dtype and device may come back: the metrics hand the result to ``encode``
    UNCHANGED, the trainer moves it to its device and calls ``.float()``. dSprites returns uint8
    (n, 1, 64, 64) with values 0 and 1.
    Image shapes: the metrics and the losses take any (n, ...) (28x28, 64x64, RGB, vectors) -
    only ``encode`` reads them; ``fastfvae train``'s networks (the paper's convolutions,
    ``fastfvae.models``) need (n, C, 64, 64) with C = ``num_channels``, values in [0, 1] (the
    Bernoulli reconstruction loss's targets).

``__len__()`` (``TrainingData`` only): the number of distinct images, usually
    prod(factor_sizes); beta-TCVAE's ``dataset_size`` N. ``num_channels`` (optional, default 1)
    is C for the trainer's networks.

``encode`` (``Encode``), the one function of the model that the metrics call:
    ``encode(dataset.images(factors)) -> (n, D) floating torch.Tensor``, e.g. the encoder mean.
    It receives the observations exactly as ``images`` returned them: for dSprites a uint8
    tensor, which a plain ``nn.Module`` rejects with torch's "Byte and Float" error - convert in
    ``encode`` (``x.float()``) and move to the model's device. It must return ONE tensor (not the
    (mu, logvar) tuple of an encoder, not a NumPy array: both raise a TypeError naming the type),
    finite, on any device (the metric then reduces there in float64).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class GroundTruthData(Protocol):
    """A data set with K discrete ground-truth factors (what the metrics call); see the module
    docstring for dtypes, devices and shapes."""

    factor_sizes: tuple[int, ...]

    def sample_factors(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Integer tensor (n, K) of class indices drawn with ``generator``."""
        ...

    def images(self, factors: torch.Tensor) -> torch.Tensor:
        """Observations (n, ...) for int64 factors (n, K); any dtype (dSprites: uint8)."""
        ...


@runtime_checkable
class TrainingData(GroundTruthData, Protocol):
    """What ``fastfvae train`` (``fastfvae.train.Trainer``) needs besides ``GroundTruthData``:
    ``__len__`` and images (n, C, 64, 64) in [0, 1]; ``num_channels`` (C) is read when present."""

    def __len__(self) -> int:
        ...


@runtime_checkable
class Encode(Protocol):
    """The model as the metrics see it: observations as ``images`` returned them (uint8 for
    dSprites: convert inside) -> one floating (n, D) torch.Tensor."""

    def __call__(self, observations: torch.Tensor) -> torch.Tensor:
        ...
