"""A ground-truth data set whose observations are its factors, and encoders with known answers.

FactorsDataset has the interface the metrics use (factor_names, factor_sizes, sample_factors,
images); ``images(factors)`` returns the factor indices as a float32 (n, K) tensor, so an encoder
is just a function of the factors.
"""
from __future__ import annotations

import torch


class FactorsDataset:
    """Uniform independent factors with the given sizes; observation = factors as float32 (n, K)."""

    def __init__(self, factor_sizes=(3, 6, 10, 8, 8)):
        self.factor_sizes = tuple(factor_sizes)
        self.factor_names = tuple(f"factor{k}" for k in range(len(self.factor_sizes)))

    def __len__(self) -> int:
        n = 1
        for s in self.factor_sizes:
            n *= s
        return n

    def sample_factors(self, n: int, generator: torch.Generator) -> torch.Tensor:
        columns = [torch.randint(s, (n,), generator=generator) for s in self.factor_sizes]
        return torch.stack(columns, dim=1) if columns else torch.zeros(n, 0, dtype=torch.long)

    def images(self, factors: torch.Tensor) -> torch.Tensor:
        return factors.to(torch.float32)


class AlignedEncoder:
    """codes[:, d] = scale[d] * factors[:, perm[d]] + noise_std * N(0, 1), plus optional constant dims.

    The noise has its own generator (seeded at construction), so two encoders built alike give the
    same codes call for call.
    """

    def __init__(self, num_factors: int, *, perm=None, scale=None, noise_std=0.0, constant_dims=0, seed=123):
        self.perm = torch.arange(num_factors) if perm is None else torch.as_tensor(perm)
        self.scale = torch.ones(num_factors, dtype=torch.float64) if scale is None else torch.as_tensor(scale, dtype=torch.float64)
        self.noise_std = noise_std
        self.constant_dims = constant_dims
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, observations: torch.Tensor) -> torch.Tensor:
        x = observations.to(torch.float64)[:, self.perm] * self.scale
        if self.noise_std:
            x = x + self.noise_std * torch.randn(x.shape, generator=self.generator, dtype=torch.float64)
        if self.constant_dims:
            x = torch.cat([x, torch.full((x.shape[0], self.constant_dims), 0.7, dtype=torch.float64)], dim=1)
        return x


class MixedEncoder:
    """codes = (factors - centre) @ mixing.T with mixing = a 4x4 Hadamard matrix whose rows and columns
    get random signs and a random order: a dense matrix in which every factor enters every dimension
    with the same weight magnitude, and whose rows are all four +-1 patterns (up to sign) on any three
    factors. With four factors of one size (exchangeable, symmetric distributions) the cube's
    symmetry group then permutes the dimensions freely, so the codes carry no information on which
    factor was fixed: every metric is at chance (1/K for the FactorVAE and beta-VAE metrics, 0 for MIG).

    A generic random dense matrix (Gaussian, or random +-1 rows) does NOT score at chance: the
    FactorVAE and beta-VAE metrics are not rotation invariant, and the dimension where a factor has
    its largest share of the variance still identifies the factor (measured: Gaussian 5x8 mixing
    scores ~0.98 on the FactorVAE metric and ~1.0 on the beta-VAE metric).
    """

    HADAMARD = ((1, 1, 1, 1), (1, -1, 1, -1), (1, 1, -1, -1), (1, -1, -1, 1))

    def __init__(self, factor_sizes, *, seed=0):
        if len(factor_sizes) != 4 or len(set(factor_sizes)) != 1:
            raise ValueError(f"MixedEncoder needs four factors of one size, got {factor_sizes}")
        g = torch.Generator().manual_seed(seed)
        mixing = torch.tensor(self.HADAMARD, dtype=torch.float64)
        mixing = mixing * (torch.randint(2, (4, 1), generator=g) * 2 - 1) * (torch.randint(2, (1, 4), generator=g) * 2 - 1)
        self.mixing = mixing[torch.randperm(4, generator=g)][:, torch.randperm(4, generator=g)]
        self.centre = (torch.tensor(factor_sizes, dtype=torch.float64) - 1) / 2

    def __call__(self, observations: torch.Tensor) -> torch.Tensor:
        return (observations.to(torch.float64) - self.centre) @ self.mixing.T


class GaussianMixEncoder:
    """codes = (factors - centre) / spread @ weights + noise_std * N(0, 1), weights a Gaussian (K, D)
    matrix: partly informative codes (scores strictly between chance and 1 for a large enough
    noise), used where a test must not be decided by a score of exactly 0 or 1."""

    def __init__(self, factor_sizes, num_dims: int, *, noise_std=1.0, seed=0):
        g = torch.Generator().manual_seed(seed)
        sizes = torch.tensor(factor_sizes, dtype=torch.float64)
        self.centre = (sizes - 1) / 2
        self.spread = ((sizes * sizes - 1) / 12).sqrt().clamp(min=1.0)  # std of a uniform index
        self.weights = torch.randn(len(factor_sizes), num_dims, generator=g, dtype=torch.float64)
        self.noise_std = noise_std
        self.generator = torch.Generator().manual_seed(seed + 1)

    def __call__(self, observations: torch.Tensor) -> torch.Tensor:
        x = (observations.to(torch.float64) - self.centre) / self.spread @ self.weights
        return x + self.noise_std * torch.randn(x.shape, generator=self.generator, dtype=torch.float64)
