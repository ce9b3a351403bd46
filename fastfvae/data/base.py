"""The ground-truth data set interface (see fastfvae/data/__init__.py)."""
from __future__ import annotations

import math
import operator

import torch


def _integer_index(i):
    """``i`` if it is an integer (int, numpy integer, 0-d integer tensor); TypeError otherwise:
    int(2.7) would silently pick image 2."""
    if isinstance(i, torch.Tensor):
        integer = not (i.dtype.is_floating_point or i.dtype.is_complex or i.dtype == torch.bool)
        if i.dim() == 0 and integer:
            return int(i)
    if isinstance(i, (bool, torch.Tensor)) or not hasattr(type(i), "__index__"):
        raise TypeError(f"index: expected an integer, got {type(i).__name__} {i!r}")
    return i


class GroundTruthDataset:
    """Base class: subclasses set ``factor_names``, ``factor_sizes`` and implement ``images``.

    Index i of the full grid corresponds to the factors whose row-major position in a grid of
    shape ``factor_sizes`` is i (the last factor varies fastest).
    """

    factor_names: tuple[str, ...] = ()
    factor_sizes: tuple[int, ...] = ()

    def images(self, factors: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def num_channels(self) -> int:
        return 1

    def __len__(self) -> int:
        return math.prod(self.factor_sizes)

    def sample_factors(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n uniform, independent factor combinations: LongTensor (n, K) on the generator's device."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n: expected a non-negative int, got {n!r}")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        sizes = torch.tensor(self.factor_sizes, dtype=torch.float64, device=generator.device)
        # One uniform draw per entry, floored into its factor's range: a single RNG call, so the
        # generator advances the same way whatever K is.
        u = torch.rand((n, len(self.factor_sizes)), generator=generator, dtype=torch.float64,
                       device=generator.device)
        return (u * sizes).floor().long().clamp_max_(sizes.long() - 1)

    def factors_of_index(self, index: torch.Tensor) -> torch.Tensor:
        """Grid indices (n,) -> factors (n, K), row-major over ``factor_sizes``."""
        index = torch.as_tensor(index, dtype=torch.long)
        out = []
        for size in reversed(self.factor_sizes):
            out.append(index % size)
            index = torch.div(index, size, rounding_mode="floor")
        return torch.stack(out[::-1], dim=-1)

    def index_of_factors(self, factors: torch.Tensor) -> torch.Tensor:
        """Factors (n, K) -> grid indices (n,), the inverse of ``factors_of_index``."""
        index = torch.zeros(factors.shape[:-1], dtype=torch.long, device=factors.device)
        for k, size in enumerate(self.factor_sizes):
            index = index * size + factors[..., k]
        return index

    def check_factors(self, factors) -> torch.Tensor:
        """Validate a factor batch: LongTensor (n, K) with 0 <= factors[:, k] < factor_sizes[k]."""
        if not isinstance(factors, torch.Tensor):
            raise TypeError(f"factors: expected a torch.Tensor, got {type(factors).__name__}")
        if factors.dtype.is_floating_point or factors.dtype.is_complex or factors.dtype == torch.bool:
            raise TypeError(f"factors: expected an integer tensor (class indices), got {factors.dtype}")
        k = len(self.factor_sizes)
        if factors.dim() != 2 or factors.shape[1] != k:
            raise ValueError(f"factors: expected shape (n, {k}), got {tuple(factors.shape)}")
        factors = factors.long()
        if factors.numel():
            sizes = torch.tensor(self.factor_sizes, device=factors.device)
            bad = (factors < 0) | (factors >= sizes)
            if bool(bad.any()):
                row, col = (int(v) for v in bad.nonzero()[0])
                raise ValueError(
                    f"factors: column {col} ({self.factor_names[col]}) must lie in "
                    f"[0, {self.factor_sizes[col]}), got {int(factors[row, col])} in row {row}"
                )
        return factors

    def __getitem__(self, i: int):
        """(image (C, 64, 64) uint8, factors (K,) long) of grid index ``i`` (an integer; negative
        counts from the end)."""
        n = len(self)
        index = operator.index(_integer_index(i))
        position = index + n if index < 0 else index
        if not 0 <= position < n:
            raise IndexError(f"index {index} out of range for a data set of {n} images (valid: {-n} to {n - 1})")
        factors = self.factors_of_index(torch.tensor([position]))
        return self.images(factors)[0], factors[0]
