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
