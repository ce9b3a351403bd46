"""The encode-once code table: the codes of every point of a data set's factor grid.

A data set with a finite factor grid (dSprites: 3*6*40*32*32 = 737,280 points) can be encoded
once, in large batches, into a table of the encoder's means (and log-variances, for
fastfvae.diagnostics). A metric then draws its points exactly as before — the same
``dataset.sample_factors`` calls with the same generator — and reads each point's code from the
table by its grid index instead of rendering and encoding the image again. The protocol and the
random draws are unchanged, so for an encoder whose output for an image does not depend on the
rest of its batch the scores are the same as without the table (the tests check this equality);
a float32 encoder whose kernels change with the batch size can differ in the last bits.

It pays when the metrics would encode more images than the grid holds: disentanglement_lib's
default sizes encode ~2.95 million images for the seven metrics against 737,280 for the table
(``fastfvae.metrics.evaluate`` decides, see suite.py).

The table assumes ``dataset.images(factors)`` is a function of the factors (one image per grid
point, as in dSprites). Grid index: row-major over ``factor_sizes`` (the last factor fastest).
"""
from __future__ import annotations

import math
import time

import torch

from fastfvae.metrics import _common

# Images per encode call while building the table: large, since the whole grid is encoded. On a
# 2-core CPU the paper's encoder is about as fast at 1024 as at 4096 (memory-bound beyond);
# a GPU wants the larger batches.
DEFAULT_TABLE_BATCH_SIZE = 4096


def grid_index(factors: torch.Tensor, factor_sizes: tuple[int, ...]) -> torch.Tensor:
    """Row-major grid index of every row of factors (n, K): LongTensor (n,) on factors' device."""
    index = torch.zeros(factors.shape[0], dtype=torch.long, device=factors.device)
    for k, size in enumerate(factor_sizes):
        index = index * size + factors[:, k]
    return index


def grid_factors(index: torch.Tensor, factor_sizes: tuple[int, ...]) -> torch.Tensor:
    """The factors (n, K) of grid indices (n,), the inverse of grid_index."""
    columns = []
    for size in reversed(factor_sizes):
        columns.append(index % size)
        index = torch.div(index, size, rounding_mode="floor")
    return torch.stack(columns[::-1], dim=1)


class CodeTable:
    """Codes of every grid point: ``means`` (N, D) and optionally ``logvars`` (N, D), in encode's
    dtype and on its device, row i the code of the point with grid index i, N = prod(factor_sizes).

    ``seconds``: time taken to build it; ``encode_batch_size``: images per encode call then.
    """

    def __init__(self, factor_sizes, means: torch.Tensor, logvars: torch.Tensor | None = None, *,
                 seconds: float = 0.0, encode_batch_size: int | None = None):
        self.factor_sizes = tuple(int(s) for s in factor_sizes)
        num_points = math.prod(self.factor_sizes)
        if means.dim() != 2 or means.shape[0] != num_points:
            raise ValueError(f"means: expected shape ({num_points}, D) for factor_sizes {self.factor_sizes}, "
                             f"got {tuple(means.shape)}")
        if logvars is not None and logvars.shape != means.shape:
            raise ValueError(f"logvars: expected the shape of means {tuple(means.shape)}, got {tuple(logvars.shape)}")
        self.means, self.logvars = means, logvars
        self.seconds, self.encode_batch_size = seconds, encode_batch_size

    @property
    def num_points(self) -> int:
        return self.means.shape[0]

    @property
    def num_dims(self) -> int:
        return self.means.shape[1]

    def rows(self, factors: torch.Tensor) -> torch.Tensor:
        """Table rows of factors (n, K): LongTensor (n,) on the table's device."""
        return grid_index(factors.to(device=self.means.device, dtype=torch.long), self.factor_sizes)

    def encode(self, factors: torch.Tensor) -> torch.Tensor:
        """The means of the points with these factors (n, K): (n, D)."""
        return self.means[self.rows(factors)]

    def encode_gaussian(self, factors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(means, logvars) of the points with these factors (n, K), each (n, D)."""
        if self.logvars is None:
            raise ValueError("code_table: holds no log-variances; build it with an encode that returns (mu, logvar)")
        rows = self.rows(factors)
        return self.means[rows], self.logvars[rows]

    def source(self, dataset) -> "TableSource":
        """A data set for the metrics whose 'images' are the factors themselves, to pair with
        ``self.encode``: metric(table.encode, table.source(dataset)) draws what metric(encode, dataset) draws."""
        return TableSource(dataset, self)

    def describe(self) -> dict:
        return {"num_points": self.num_points, "num_dims": self.num_dims, "seconds": self.seconds,
                "encode_batch_size": self.encode_batch_size, "has_logvars": self.logvars is not None}


class TableSource:
    """``dataset``'s factor sampling with observations = the factors (n, K) (the table's key)."""

    def __init__(self, dataset, table: CodeTable):
        sizes = _common.check_dataset(dataset)
        if sizes != table.factor_sizes:
            raise ValueError(f"code_table: built for factor_sizes {table.factor_sizes}, the data set has {sizes}")
        self.dataset, self.table = dataset, table
        self.factor_sizes = sizes

    def sample_factors(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.dataset.sample_factors(n, generator)

    def images(self, factors: torch.Tensor) -> torch.Tensor:
        return factors


def _split_output(output, n: int, num_dims: int | None):
    """encode's output for n images: (means, logvars or None), each (n, D), checked as the metrics
    check codes and kept in encode's dtype (the metrics and diagnostics then see what they would
    have seen from encode itself)."""
    if isinstance(output, (tuple, list)):
        if len(output) != 2:
            raise TypeError(f"encode: expected a tensor (means) or a pair (mu, logvar), got a {type(output).__name__} "
                            f"of {len(output)}")
        mu = _common.check_representations(output[0], n, num_dims)
        _common.check_representations(output[1], n, mu.shape[1])
        return output[0].detach(), output[1].detach()
    _common.check_representations(output, n, num_dims)
    return output.detach(), None


def encode_code_table(
    encode,
    dataset,
    *,
    encode_batch_size: int = DEFAULT_TABLE_BATCH_SIZE,
    data_device=None,
) -> CodeTable:
    """Encode every point of ``dataset``'s factor grid once.

    encode: observations (n, ...) -> floating (n, D) means, or a pair (mu, logvar) of (n, D)
        (then the table also holds log-variances, for fastfvae.diagnostics.decompose_kl).
    dataset: ground-truth data set (factor_sizes, sample_factors, images), images a function of
        the factors. encode_batch_size: images per call. data_device: as in the metrics.
    Returns a CodeTable on the device encode returns its codes on. Runs under no_grad.
    """
    start_time = time.perf_counter()
    sizes = _common.check_dataset(dataset)
    dataset = _common.images_on(dataset, data_device)
    encode_batch_size = _common.check_positive_int("encode_batch_size", encode_batch_size)
    num_points = math.prod(sizes)
    means, logvars, num_dims = [], [], None
    with torch.no_grad():
        for start in range(0, num_points, encode_batch_size):
            index = torch.arange(start, min(start + encode_batch_size, num_points))
            mu, logvar = _split_output(encode(dataset.images(grid_factors(index, sizes))), index.shape[0], num_dims)
            num_dims = mu.shape[1]
            if start > 0 and (logvar is None) != (not logvars):
                raise TypeError("encode: returned a (mu, logvar) pair for some batches and a tensor for others")
            means.append(mu)
            if logvar is not None:
                logvars.append(logvar)
    return CodeTable(sizes, torch.cat(means), torch.cat(logvars) if logvars else None,
                     seconds=time.perf_counter() - start_time, encode_batch_size=encode_batch_size)
