"""Input validation shared by the public functions (DESIGN.md §7).

Every check raises TypeError (wrong type or dtype) or ValueError (wrong shape, size, device or
value) naming the argument, what was expected and what was given. They run on the eager hot
path, so they only read tensor metadata.
"""
from __future__ import annotations

import operator

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
WIDE_DTYPES = (torch.float32, torch.float64)  # the dtypes the ops compute in (no widening needed)


def check_float_tensor(name: str, value, ranks: tuple[int, ...]) -> None:
    """``value`` is a floating tensor whose rank is in ``ranks`` and whose dimensions are all
    non-empty (so B >= 1)."""
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
        raise ValueError(f"{name}: expected a non-empty tensor (B >= 1), got shape {tuple(value.shape)}")


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
    check_float_tensor(name, logits, ranks=(1, 2))
    if logits.dim() == 2 and logits.shape[1] not in (1, 2):
        raise ValueError(
            f"{name}: expected discriminator logits of shape (B, 2), (B, 1) or (B,), "
            f"got {tuple(logits.shape)}"
        )


def check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def check_positive_int(name: str, value) -> int:
    """``value`` is an integer >= 1 (a Python int or a NumPy integer; not a bool or a float).
    Returns it as a Python int."""
    if isinstance(value, bool) or isinstance(value, torch.Tensor):
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    try:
        number = operator.index(value)  # ints and numpy integers; refuses 2.7, "3"
    except TypeError:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    return number


def promoted(*tensors):
    """The tensors (None passes through) in their common dtype by torch's promotion rules, as
    torch's binary ops would compute them (bfloat16 with float32 -> float32; float16 with
    bfloat16 -> float32). A no-op when the dtypes already agree (issue 17.2)."""
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
