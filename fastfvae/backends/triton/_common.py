"""Helpers shared by the Triton launchers (one op per file lives next to this one).

- ``device_guard``: Triton launches on the *current* CUDA device, so a tensor on cuda:1 needs
  cuda:1 made current for the launch (DESIGN.md §6); CPU tensors (TRITON_INTERPRET=1) need none.
- ``compute_dtype``: float64 inputs are computed in float64, every other float dtype in float32
  (half types are loaded, widened, and rounded once on store), as the reference backend does.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from fastfvae.reference import compute_dtype as reference_compute_dtype


def device_guard(t: torch.Tensor):
    """A context that makes ``t``'s CUDA device current for a launch (no-op on CPU)."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def compute_dtype(dtype: torch.dtype):
    """The Triton dtype the kernels accumulate in for inputs of ``dtype`` (the rule of
    fastfvae.reference.compute_dtype)."""
    return tl.float64 if reference_compute_dtype(dtype) == torch.float64 else tl.float32


def accumulator_torch_dtype(dtype: torch.dtype) -> torch.dtype:
    """``compute_dtype`` as a torch dtype (for scratch buffers of partial results)."""
    return reference_compute_dtype(dtype)


# Deterministic batch reductions (tc_loss, discriminator_loss, the mean/sum KL): up to
# ROWS_PER_PROGRAM rows, one program sums them all (one launch, the paper's batches); beyond,
# a grid of programs writes one partial sum per ROWS_PER_PROGRAM rows into a scratch vector
# and one more program adds the partials in index order (two launches, every SM busy: one
# program over B = 1M rows is ~1,000 dependent iterations on one SM). No atomics: the order
# depends only on B, so results are run-to-run identical.
ROWS_PER_PROGRAM = 16384
SUM_BLOCK = 1024


@triton.jit
def _sum_kernel(
    values_ptr,  # (n,) float, contiguous: the values to add
    out_ptr,  # (programs,) any float: out[p] = sum of values[p*per_program : (p+1)*per_program] / divisor
    n,
    per_program,
    divisor,
    BLOCK: tl.constexpr,
):
    """One program per slice of per_program values, each summed in a fixed order."""
    first = tl.program_id(0) * per_program
    acc = tl.zeros((BLOCK,), dtype=values_ptr.dtype.element_ty)
    for start in range(0, per_program, BLOCK):
        lane = start + tl.arange(0, BLOCK)
        offs = (first + lane).to(tl.int64)
        acc += tl.load(values_ptr + offs, mask=(offs < n) & (lane < per_program), other=0.0)
    total = tl.sum(acc, axis=0) / divisor  # int -> float by promotion (1 may arrive as a constexpr)
    tl.store(out_ptr + tl.program_id(0), total.to(out_ptr.dtype.element_ty))


def sum_into(values: torch.Tensor, out: torch.Tensor, divisor: int) -> None:
    """out (a 0-d tensor) = sum(values) / divisor, values (n,) contiguous in the compute dtype;
    deterministic: one program up to ROWS_PER_PROGRAM values, else partial sums then their sum."""
    n = values.numel()
    if n > ROWS_PER_PROGRAM:
        programs = triton.cdiv(n, ROWS_PER_PROGRAM)
        partials = torch.empty((programs,), dtype=values.dtype, device=values.device)
        _sum_kernel[(programs,)](values, partials, n, ROWS_PER_PROGRAM, 1, BLOCK=SUM_BLOCK)
        values, n = partials, programs
    _sum_kernel[(1,)](values, out, n, n, divisor, BLOCK=min(SUM_BLOCK, next_pow2(n)))


# CUDA's grid limits: 2^31 - 1 programs on axis 0, 65535 on axes 1 and 2.
GRID_LIMITS = (2**31 - 1, 65535, 65535)


def checked_grid(grid: tuple[int, ...], what: str) -> tuple[int, ...]:
    """``grid`` itself, or a ValueError naming the axis when it exceeds CUDA's limit (a launch
    would otherwise fail with CUDA's bare "invalid argument")."""
    for axis, (size, limit) in enumerate(zip(grid, GRID_LIMITS)):
        if size > limit:
            raise ValueError(f"{what}: needs {size} Triton programs on grid axis {axis}, over CUDA's limit "
                             f"of {limit}; use the native or reference backend for this shape")
    return grid


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, int(n)))


def _patch_interpreter_index_for_numpy_2_4() -> None:
    """Let ``range(n)`` over a runtime int work in Triton's interpreter with numpy >= 2.4.

    The interpreter keeps scalars as 1-element arrays and implements ``tensor.__index__`` as
    ``int(array)``, which numpy 2.4 no longer allows for arrays with ndim > 0, so every kernel
    loop with a runtime bound fails under TRITON_INTERPRET=1 (triton-lang/triton#9171, fixed
    upstream after triton 3.6). This re-defines ``__index__`` as the same conversion of the
    single element. Applied only when interpreting and only to an interpreter with the bug;
    compiled GPU kernels are untouched.
    """
    import inspect

    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "fastfvae_index_fix", False):
        return
    try:
        buggy = "int(self.handle.data))" in inspect.getsource(original)
    except (OSError, TypeError):
        return
    if not buggy:
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patch_lang_tensor.fastfvae_index_fix = True
    interpreter._patch_lang_tensor = patch_lang_tensor


if triton.knobs.runtime.interpret:
    _patch_interpreter_index_for_numpy_2_4()
