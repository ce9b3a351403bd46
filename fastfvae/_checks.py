"""Input validation shared by the public functions (DESIGN.md §7).

Every check raises TypeError (wrong type or dtype) or ValueError (wrong shape, size, device or
value) naming the argument, what was expected and what was given. They run on the eager hot
path, so they only read tensor metadata.
"""
from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
WIDE_DTYPES = (torch.float32, torch.float64)  # the dtypes the ops compute in (no widening needed)


# The names of a tensor's dimensions by rank, for messages that name the empty one.
DIM_NAMES = {1: ("B",), 2: ("B", "D"), 3: ("G", "B", "D")}


def _empty_dimension(shape: tuple, names: tuple) -> str:
    """'D' (or 'dimension 3' where unnamed) for the first empty dimension of ``shape``."""
    position = shape.index(0)
    return names[position] if position < len(names) else f"dimension {position}"


def check_float_tensor(name: str, value, ranks: tuple[int, ...], dim_names: tuple | None = None) -> None:
    """``value`` is a floating tensor whose rank is in ``ranks`` and whose dimensions are all
    non-empty (so B >= 1). ``dim_names`` names its dimensions for the message on an empty one
    (e.g. ("M", "D")); by default DIM_NAMES of its rank (a (B, ...) tensor beyond those)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected a floating dtype (float16, bfloat16, float32, float64), got {value.dtype}"
        )
    if value.dim() not in ranks:
        shapes = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(f"{name}: expected a {shapes} tensor, got shape {tuple(value.shape)}")
    if value.numel() == 0:
        shape = tuple(value.shape)
        empty = _empty_dimension(shape, dim_names or DIM_NAMES.get(len(shape), ("B",)))
        raise ValueError(f"{name}: expected a non-empty tensor ({empty} >= 1), got shape {shape}")


def check_like(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor, *, same_dtype: bool = True) -> None:
    """``value`` has ``ref``'s shape and device, and its dtype unless ``same_dtype=False`` (the
    ops promote mixed float dtypes instead, see ``promoted``)."""
    if value.shape != ref.shape:
        raise ValueError(
            f"{name}: expected the shape of {ref_name} {tuple(ref.shape)}, got {tuple(value.shape)}"
        )
    if value.device != ref.device:
        raise ValueError(f"{name}: expected a tensor on {ref_name}'s device {ref.device}, got {value.device}")
    if same_dtype and value.dtype != ref.dtype:
        raise TypeError(f"{name}: expected {ref_name}'s dtype {ref.dtype}, got {value.dtype}")


def check_logits(name: str, logits) -> None:
    """Discriminator logits: (B, 2), (B, 1) or (B,)."""
    check_float_tensor(name, logits, ranks=(1, 2), dim_names=("B", "K"))
    if logits.dim() == 2 and logits.shape[1] not in (1, 2):
        raise ValueError(
            f"{name}: expected discriminator logits of shape (B, 2), (B, 1) or (B,), "
            f"got {tuple(logits.shape)}"
        )


def check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def integer_value(value) -> int | None:
    """``value`` as a Python int when it is an integer: a Python or NumPy integer
    (``numbers.Integral``); None for anything else, bools included (True is not a count). Not
    tensors: counts, sizes and seeds are host values, and reading a device tensor's would
    synchronise (a step counter that lives on the device has its own rule, AnnealedVAELoss's).
    The one rule for every integer argument of the package."""
    if isinstance(value, (bool, torch.Tensor)):  # a 0-d tensor is an Integral by __index__
        return None
    if isinstance(value, numbers.Integral):  # NumPy's bool_ is not one
        return int(value)
    return None


def real_value(value) -> float | None:
    """``value`` as a Python float when it is a real number: a Python or NumPy real or integer
    (``numbers.Real``) or a 0-d real tensor (a weight given once, at construction); None for
    anything else, bools included. Finiteness is the caller's check (``check_real``)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 and not (value.dtype.is_complex or value.dtype == torch.bool):
            return float(value)
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def check_real(name: str, value, minimum: float | None = None) -> float:
    """``value`` is a finite real number (``real_value``), >= ``minimum`` when given; returns it
    as a Python float. TypeError for a non-number (or a bool), ValueError for NaN, +-inf or a
    value below ``minimum``."""
    number = real_value(value)
    if number is None:
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    bound = "" if minimum is None else f" >= {minimum:g}"
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        raise ValueError(f"{name}: expected a finite number{bound}, got {value!r}")
    return number


def check_positive_int(name: str, value) -> int:
    """``value`` is an integer >= 1 (``integer_value``: a Python or NumPy integer; not a bool,
    a float or a tensor). Returns it as a Python int."""
    number = integer_value(value)
    if number is None or number < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    return number


def promoted(*tensors):
    """The tensors (None passes through) in their common dtype by torch's promotion rules, as
    torch's binary ops would compute them (bfloat16 with float32 -> float32; float16 with
    bfloat16 -> float32). A no-op when the dtypes already agree."""
    first = tensors[0].dtype
    for t in tensors:
        if t is not None and t.dtype != first:
            break
    else:
        return tensors  # the common case: one dtype, nothing to do
    dtype = first
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t if t is None or t.dtype == dtype else t.to(dtype) for t in tensors)


# ---------------------------------------------------------------------------------------------
# Adapters the logit ops share (tc_loss, discriminator_loss): they run after the checks
# ---------------------------------------------------------------------------------------------
def to_compute_dtype(t: torch.Tensor) -> torch.Tensor:
    """16-bit logits widened to float32 before a reducing op, so the reduction is returned in
    float32: exactly what the kernels would compute (they widen on load), and B x K elements
    are cheap to copy."""
    return t if t.dtype in WIDE_DTYPES else t.float()


def as_columns(logits: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1); (B, K) unchanged (the launchers take (B, K))."""
    return logits if logits.dim() == 2 else logits.unsqueeze(1)


INDEX_DTYPES = (torch.int64, torch.int32)


def check_gather_index(index, table_name: str, table: torch.Tensor, dtype) -> None:
    """The gather ops' ``index`` (B,) int64/int32 rows on ``table``'s device, and their output
    ``dtype`` (one of FLOAT_DTYPES); the errors name the argument, expected and actual values."""
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"index: expected a torch.Tensor, got {type(index).__name__}")
    if index.dtype not in INDEX_DTYPES:
        raise TypeError(f"index: expected dtype torch.int64 or torch.int32, got {index.dtype}")
    if index.dim() != 1 or index.shape[0] == 0:
        raise ValueError(f"index: expected a 1-D tensor of B >= 1 row indices, got shape {tuple(index.shape)}")
    if index.device != table.device:
        raise ValueError(f"index: expected a tensor on {table_name}'s device {table.device}, got {index.device}")
    if not isinstance(dtype, torch.dtype) or dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"dtype: expected one of torch.float32, torch.float64, torch.float16, torch.bfloat16, got {dtype!r}"
        )
