"""Shared plumbing for the metrics: input checks, reproducible sampling, chunked encoding.

The metrics see a data set only through the ground-truth interface of fastfvae.data (typed and
documented as ``fastfvae.data.GroundTruthData`` in fastfvae/data/protocol.py):

- ``dataset.factor_sizes``: tuple of K ints, the number of values of each factor;
- ``dataset.sample_factors(n, generator)``: LongTensor (n, K) of class indices, drawn with ``generator``;
- ``dataset.images(factors)``: observations (n, ...) for a LongTensor (n, K) of factors;

and see the model only through ``encode(observations) -> (n, D)`` floating tensor (for instance the
encoder mean). Factors stay on the CPU (that is where data sets sample and render); representations
stay on the device ``encode`` returns them on and are reduced there in float64.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from fastfvae._checks import integer_value, real_value

# Images per call to dataset.images + encode. On this 2-core CPU the paper's dSprites encoder is
# fastest at batches of 256-1024 (measured 4.4k img/s at 256, 2.2k img/s at 4096); a GPU
# prefers larger chunks, so every metric takes ``encode_batch_size``.
DEFAULT_ENCODE_BATCH_SIZE = 1024


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """``value`` is an integer >= ``minimum`` (``fastfvae._checks.integer_value``: Python and
    NumPy integers; not bools, floats or tensors); returns it as a Python int."""
    number = integer_value(value)
    if number is None:
        raise TypeError(f"{name}: expected an int >= {minimum}, got {type(value).__name__} {value!r}")
    if number < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return number


def check_nonnegative_float(name: str, value) -> float:
    """A finite real >= 0 (``fastfvae._checks.real_value``); returns it as a Python float."""
    number = real_value(value)
    if number is None:
        raise TypeError(f"{name}: expected a float >= 0, got {type(value).__name__} {value!r}")
    if not 0.0 <= number < float("inf"):  # also rejects NaN
        raise ValueError(f"{name}: expected a float >= 0 (finite), got {value}")
    return number


def check_dataset(dataset) -> tuple[int, ...]:
    """The data set's factor sizes, after checking it has the ground-truth interface and is not empty."""
    missing = [a for a in ("factor_sizes", "sample_factors", "images") if not hasattr(dataset, a)]
    if missing:
        raise TypeError(
            "dataset: expected an object with factor_sizes, sample_factors(n, generator) and "
            f"images(factors), got {type(dataset).__name__} without {', '.join(missing)}"
        )
    for attr in ("sample_factors", "images"):
        if not callable(getattr(dataset, attr)):
            raise TypeError(f"dataset.{attr}: expected a callable, got {type(getattr(dataset, attr)).__name__}")
    raw = dataset.factor_sizes
    try:
        sizes = tuple(raw)
    except TypeError:
        raise TypeError(f"dataset.factor_sizes: expected a tuple of ints, got {raw!r}") from None
    numbers = tuple(integer_value(s) for s in sizes)  # NumPy integers too (an npz's latents_sizes)
    if any(n is None for n in numbers):
        raise TypeError(f"dataset.factor_sizes: expected a tuple of ints, got {raw!r}")
    sizes = numbers
    if len(sizes) == 0:
        raise ValueError("dataset.factor_sizes: expected at least one factor, got an empty tuple")
    if any(s < 1 for s in sizes):
        raise ValueError(f"dataset.factor_sizes: every factor needs at least one value, got {sizes} (empty data set)")
    return sizes


class _ImagesOnDevice:
    """The data set with ``images(factors)`` called on factors moved to ``device`` (a data set that
    renders on its factors' device, as fastfvae.data.DSprites does, then renders there)."""

    def __init__(self, dataset, device: torch.device):
        self.dataset, self.device = dataset, device
        self.factor_sizes = dataset.factor_sizes
        self.sample_factors = dataset.sample_factors

    def images(self, factors: torch.Tensor):
        return self.dataset.images(factors.to(self.device))


def images_on(dataset, data_device):
    """``dataset`` itself when data_device is None, else a view of it whose images() get factors on
    ``data_device`` (factors are sampled on the CPU either way)."""
    if data_device is None:
        return dataset
    try:
        device = torch.device(data_device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"data_device: expected None or a torch device, got {data_device!r} ({error})") from None
    return _ImagesOnDevice(dataset, device)


def make_generator(seed: int | None, generator: torch.Generator | None) -> tuple[torch.Generator, int | None]:
    """The CPU generator every draw of a metric comes from, and the seed to report (None when the
    caller passed their own generator)."""
    if generator is not None:
        if seed is not None:
            raise ValueError(f"seed, generator: pass one of them, got seed={seed} and a generator")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        return generator, None
    number = 0 if seed is None else integer_value(seed)
    if number is None:
        raise TypeError(f"seed: expected an int, got {type(seed).__name__} {seed!r}")
    return torch.Generator().manual_seed(number), number


def sample_factors(dataset, sizes: tuple[int, ...], n: int, generator: torch.Generator) -> torch.Tensor:
    """``dataset.sample_factors(n, generator)`` checked: LongTensor (n, K) on the CPU with
    0 <= factors[:, k] < sizes[k]."""
    factors = dataset.sample_factors(n, generator)
    k = len(sizes)
    if not isinstance(factors, torch.Tensor):
        raise TypeError(f"dataset.sample_factors: expected a LongTensor ({n}, {k}), got {type(factors).__name__}")
    if factors.dtype.is_floating_point or factors.dtype.is_complex or factors.dtype == torch.bool:
        raise TypeError(f"dataset.sample_factors: expected an integer tensor, got {factors.dtype}")
    if tuple(factors.shape) != (n, k):
        raise ValueError(f"dataset.sample_factors: expected shape ({n}, {k}), got {tuple(factors.shape)}")
    factors = factors.to(device="cpu", dtype=torch.long)
    if n > 0:
        size_row = torch.tensor(sizes, dtype=torch.long)
        if bool((factors < 0).any()) or bool((factors >= size_row).any()):
            raise ValueError(
                f"dataset.sample_factors: expected factor k in [0, factor_sizes[k]) with factor_sizes={sizes}, "
                f"got values from {factors.min(0).values.tolist()} to {factors.max(0).values.tolist()}"
            )
    return factors


def check_representations(reps, n: int, num_dims: int | None) -> torch.Tensor:
    """One output of ``encode`` for n observations: a finite floating (n, D) tensor (D = num_dims
    when known), returned detached in float64 on its own device."""
    if not isinstance(reps, torch.Tensor):
        raise TypeError(
            f"encode: expected a floating torch.Tensor of shape ({n}, D), got {type(reps).__name__} "
            "(return e.g. the encoder mean, not a tuple)"
        )
    if not reps.dtype.is_floating_point:
        raise TypeError(f"encode: expected a floating tensor of shape ({n}, D), got dtype {reps.dtype}")
    if reps.dim() != 2:
        raise ValueError(f"encode: expected a 2-D tensor of shape ({n}, D) for {n} observations, got shape {tuple(reps.shape)}")
    if reps.shape[0] != n:
        raise ValueError(f"encode: expected {n} rows (one per observation), got shape {tuple(reps.shape)}")
    if reps.shape[1] == 0:
        raise ValueError(f"encode: expected at least one representation dimension, got shape {tuple(reps.shape)}")
    if num_dims is not None and reps.shape[1] != num_dims:
        raise ValueError(
            f"encode: expected {num_dims} dimensions as in its earlier outputs, got shape {tuple(reps.shape)}"
        )
    reps = reps.detach().to(torch.float64)
    # One cheap reduction first; the mask is only built when the sum is not finite (a NaN/Inf, or
    # finite values near 1e308 whose sum overflows, which are fine).
    if not bool(torch.isfinite(reps.sum())):
        bad = int((~torch.isfinite(reps)).sum())
        if bad:
            raise ValueError(f"encode: returned {bad} non-finite values (NaN or Inf) in an output of shape {tuple(reps.shape)}")
    return reps


def encode_chunks(
    encode, dataset, factors: torch.Tensor, chunk_size: int, num_dims: int | None = None
) -> Iterator[torch.Tensor]:
    """Yield ``encode(dataset.images(factors[i:i + chunk_size]))`` as checked float64 (m, D) tensors,
    in order. ``factors``: LongTensor (n, K). Runs under no_grad."""
    n = factors.shape[0]
    with torch.no_grad():
        for start in range(0, n, chunk_size):
            chunk = factors[start:start + chunk_size]
            reps = check_representations(encode(dataset.images(chunk)), chunk.shape[0], num_dims)
            num_dims = reps.shape[1]
            yield reps


def encode_all(encode, dataset, factors: torch.Tensor, chunk_size: int, num_dims: int | None = None) -> torch.Tensor:
    """``encode`` of every row of ``factors`` (n, K), concatenated: float64 (n, D) on encode's device."""
    return torch.cat(list(encode_chunks(encode, dataset, factors, chunk_size, num_dims)))


def check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def sample_codes(encode, dataset, sizes: tuple[int, ...], n: int, generator: torch.Generator,
                 encode_batch_size: int, num_dims: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """n random points as disentanglement_lib's ``generate_batch_factor_code``: (codes float64 (n, D)
    on encode's device, factors LongTensor (n, K) on the CPU)."""
    factors = sample_factors(dataset, sizes, n, generator)
    return encode_all(encode, dataset, factors, encode_batch_size, num_dims), factors


def check_enough_points(name: str, n: int, sizes: tuple[int, ...]) -> None:
    """A classifier per factor needs a chance to see every class: n >= the largest factor size."""
    if n < max(sizes):
        raise ValueError(
            f"{name}: expected at least {max(sizes)} points (the largest factor has {max(sizes)} classes, "
            f"factor_sizes={sizes}), got {n}"
        )


def check_factors_vary(name: str, factors: torch.Tensor) -> None:
    """Every factor takes at least two values among the training points (a classifier needs two
    classes); otherwise a clear error instead of scikit-learn's."""
    for k in range(factors.shape[1]):
        if int(factors[:, k].unique().numel()) < 2:
            raise ValueError(
                f"{name}: factor {k} takes a single value ({int(factors[0, k])}) in all {factors.shape[0]} "
                "training points; a classifier needs two classes (raise the number of points, or drop a "
                "factor of size 1 from the data set)"
            )


def random_state(generator: torch.Generator) -> int:
    """A seed for a scikit-learn estimator, drawn after the points so the points do not move."""
    return int(torch.randint(2**31 - 1, (1,), generator=generator))


def to_numpy(tensor: torch.Tensor):
    return tensor.detach().cpu().numpy()
