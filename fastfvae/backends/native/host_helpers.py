"""Host helpers of the CPU library: C++ routines that are not ops (no autograd, no dispatch,
no other backend), used by fastfvae/layers.py (conv_windows, the decoder's transposed
convolutions) and fastfvae/metrics/_boosting.py (boosting_trees_grow, DCI's batched tree grower).

They depend on the library loader only, not on the op launchers; each has an ``*_available()``
that says why it cannot run (``why_not`` covers ops only).
"""
from __future__ import annotations

import torch

from fastfvae.backends.native.library import DTYPE_CODES, _call, load

# ---------------------------------------------------------------------------------------------
# boosting_trees_grow (a host helper of DCI's estimator="batched", CPU library only; not an op)
# ---------------------------------------------------------------------------------------------


def host_helper_available(*entries: str) -> str | None:
    """None when the CPU library exports every one of ``entries`` (host helpers that are not
    ops, so ``why_not`` does not cover them), else why not."""
    library, reason = load("cpu")
    if library is None:
        return reason
    missing = [name for name in entries if name not in library.functions]
    if missing:
        return f"{library.path.name} does not export {', '.join(missing)}; rebuild it with `pip install -e .`"
    return None


def boosting_trees_available() -> str | None:
    """None when the CPU library exports the tree grower, else why not."""
    return host_helper_available("ffv_boosting_trees_grow")


def boosting_trees_grow(x_t, order, residual_t, fixed_t, fixed_bits: int, max_depth: int, x_test_t, seed: int,
                        counter_base: int):
    """One boosting stage's T trees (kernels/cpu/boosting_trees.cpp), CPU tensors:
    x_t float32 (F, N), order int64 (F, N), residual_t float64 (T, N), fixed_t int64 (T, N) its
    fixed-point copy (round(residual * 2^fixed_bits)), x_test_t float32 (F, M);
    seed, counter_base: the Philox draws that break ties between features (boosting_trees.cpp).

    Returns leaf int64 (T, N), importance float64 (T, F), test_leaf int64 (T, M). (The trees'
    split, feature and threshold arrays are the kernel's scratch: it routes the test samples itself.)"""
    x_t, order, residual_t, fixed_t, x_test_t = (t.contiguous() for t in (x_t, order, residual_t, fixed_t, x_test_t))
    num_features, n = x_t.shape
    trees, m = residual_t.shape[0], x_test_t.shape[1]
    heap = 2 ** max_depth - 1
    leaf = torch.empty(trees, n, dtype=torch.int64)
    split = torch.empty(trees, heap, dtype=torch.uint8)
    feature = torch.empty(trees, heap, dtype=torch.int64)
    threshold = torch.empty(trees, heap, dtype=torch.float64)
    importance = torch.empty(trees, num_features, dtype=torch.float64)
    test_leaf = torch.empty(trees, m, dtype=torch.int64)
    _call(
        "ffv_boosting_trees_grow", x_t,
        n, num_features, trees, max_depth, seed, counter_base,
        x_t.data_ptr(), order.data_ptr(), residual_t.data_ptr(), fixed_t.data_ptr(), fixed_bits,
        leaf.data_ptr(), split.data_ptr(), feature.data_ptr(), threshold.data_ptr(), importance.data_ptr(),
        m, x_test_t.data_ptr() if m else None, test_leaf.data_ptr() if m else None,
    )
    return leaf, importance, test_leaf


# ---------------------------------------------------------------------------------------------
# conv_windows (a host helper of fastfvae/layers.py, CPU library only; not an op)
# ---------------------------------------------------------------------------------------------


def conv_windows_available() -> str | None:
    """None when the CPU library exports the conv_windows helpers, else why not."""
    return host_helper_available("ffv_conv_windows_gather", "ffv_conv_windows_scatter")


def conv_windows_gather(x: torch.Tensor) -> torch.Tensor:
    """x: float32/float64 CPU (B, C, H, W), H and W even (any strides) -> the windows of a 4x4,
    stride-2, padding-1 convolution, (C*16, B*(H/2)*(W/2)) (kernels/cpu/conv_windows.cpp)."""
    batch, channels, height, width = x.shape
    windows = torch.empty((channels * 16, batch * (height // 2) * (width // 2)), dtype=x.dtype)
    _call("ffv_conv_windows_gather", x, DTYPE_CODES[x.dtype], batch, channels, height, width,
          x.data_ptr(), *x.stride(), windows.data_ptr())
    return windows


def conv_windows_scatter(windows: torch.Tensor, batch: int, channels: int, height: int, width: int) -> torch.Tensor:
    """The adjoint of conv_windows_gather: windows (C*16, B*(H/2)*(W/2)) float32/float64 CPU (any
    strides) -> (B, C, H, W) contiguous, each entry added where gather read it."""
    x = torch.empty((batch, channels, height, width), dtype=windows.dtype)
    _call("ffv_conv_windows_scatter", windows, DTYPE_CODES[windows.dtype], batch, channels, height, width,
          windows.data_ptr(), *windows.stride(), x.data_ptr())
    return x
