"""Host helpers of the CPU library: C++ routines that are not ops (no autograd, no dispatch,
no other backend), used by fastfvae/layers.py (conv_windows, the decoder's transposed
convolutions), fastfvae/metrics/_boosting.py (boosting_trees_grow, DCI's batched tree grower),
fastfvae/ops/reparameterize_kl.py (reparameterize_kl_noise: the eps the CPU path keeps) and
fastfvae/dip_penalty.py (dip_penalty_forward: DIP-VAE's penalty in one pass).

They depend on the library loader only, not on the op launchers; each has an ``*_available()``
that says why it cannot run (``why_not`` covers ops only).
"""
from __future__ import annotations

import ctypes

import torch

from fastfvae.backends.native.library import DTYPE_CODES, _call, declare_entry_points, dtype_code, i32, i64, load, ptr

# ---------------------------------------------------------------------------------------------
# boosting_trees_grow (a host helper of DCI's estimator="batched", CPU library only; not an op)
# ---------------------------------------------------------------------------------------------
declare_entry_points(None, {
    "ffv_boosting_trees_grow": (
        i64, i64, i64, i32, i64, i64,  # N F T max_depth seed counter_base
        ptr, ptr, ptr, ptr, i32,  # x order residual fixed fixed_bits
        ptr, ptr, ptr, ptr, ptr,  # leaf split feature threshold importance
        i64, ptr, ptr, ptr,  # M x_test test_leaf stream
    ),
})


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
declare_entry_points(None, {
    "ffv_conv_windows_gather": (
        dtype_code, i64, i64, i64, i64,  # dtype B C H W
        ptr, i64, i64, i64, i64, ptr, ptr,  # x(s0..s3) windows stream
    ),
    "ffv_conv_windows_scatter": (
        dtype_code, i64, i64, i64, i64,  # dtype B C H W
        ptr, i64, i64, ptr, ptr,  # windows(s0, s1) x stream
    ),
})


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


# ---------------------------------------------------------------------------------------------
# philox_fill (a host helper of the reparameterize_kl op on the CPU, CPU library only; not an op)
# ---------------------------------------------------------------------------------------------
declare_entry_points(None, {
    "ffv_philox_fill": (i32, ptr, i64, ptr, ptr),  # kind seed n out stream
})


def philox_fill_available() -> str | None:
    """None when the CPU library exports ffv_philox_fill, else why not."""
    return host_helper_available("ffv_philox_fill")


def reparameterize_kl_noise(seed: torch.Tensor, batch: int, dim: int) -> torch.Tensor:
    """The eps reparameterize_kl_forward draws from ``seed`` (int64 (1,), CPU) when given none:
    float32 (batch, dim), bit for bit (kernels/cpu/philox_fill.cpp)."""
    eps = torch.empty((batch, dim), dtype=torch.float32)
    _call("ffv_philox_fill", eps, 0, seed.data_ptr(), batch * dim, eps.data_ptr())
    return eps


# ---------------------------------------------------------------------------------------------
# dip_penalty_forward (a host helper of fastfvae/dip_penalty.py, CPU library only; not an op)
# ---------------------------------------------------------------------------------------------
declare_entry_points(None, {
    "ffv_dip_penalty_forward": (
        dtype_code, i64, i64, ptr, i64, i64, ptr, i64, i64,  # dtype B D mu(s0, s1) logvar(s0, s1)
        ctypes.c_double, ctypes.c_double,  # lambda_od lambda_d
        ptr, ptr, ptr, ptr, ptr,  # distance mean penalty variance stream
    ),
})


def dip_penalty_available() -> str | None:
    """None when the CPU library exports ffv_dip_penalty_forward, else why not."""
    return host_helper_available("ffv_dip_penalty_forward")


def dip_penalty_forward(mu: torch.Tensor, logvar: torch.Tensor | None, lambda_od: float, lambda_d: float,
                        keep_variance: bool):
    """DIP-VAE's penalty forward in one pass (kernels/cpu/dip_penalty.cpp). mu, logvar: (B, D)
    float32/float64 CPU, one dtype, any strides, B >= 2; logvar None for DIP-VAE-I.

    Returns distance (D, D) = Cov[mu] + diag(mean exp(logvar)) - I, mean (D,), the penalty ()
    and, when keep_variance (needs logvar), exp(logvar) (B, D); else None."""
    batch, dim = mu.shape
    distance = mu.new_empty((dim, dim))
    mean = mu.new_empty((dim,))
    penalty = mu.new_empty(())
    variance = mu.new_empty((batch, dim)) if keep_variance else None
    lv_ptr, lv_s0, lv_s1 = (None, 0, 0) if logvar is None else (logvar.data_ptr(), *logvar.stride())
    _call("ffv_dip_penalty_forward", mu, DTYPE_CODES[mu.dtype], batch, dim, mu.data_ptr(), *mu.stride(),
          lv_ptr, lv_s0, lv_s1, float(lambda_od), float(lambda_d), distance.data_ptr(), mean.data_ptr(),
          penalty.data_ptr(), None if variance is None else variance.data_ptr())
    return distance, mean, penalty, variance
