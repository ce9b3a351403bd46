"""The decoder's transposed convolutions with faster CPU paths (DESIGN.md §13).

``ConvTranspose2d`` is an ``nn.ConvTranspose2d`` (same parameters, state_dict, outputs and
gradients to float rounding, double backward included) that avoids oneDNN's slow cases on the
CPU for the paper's shape (4x4 kernel, stride 2, padding 1) in float32/float64. Measured on a
2-core Xeon VM (AVX-512) at the paper's B = 64 (bench/RESULTS.md):

- Few output channels (the decoder's last layer, 1 or 3 channels): oneDNN's forward ran at ~8
  GFLOP/s (8 ms). Here it is one GEMM, x as rows (B*h*w, C) times the kernel (C, O*16), whose
  result holds every input pixel's 4x4 window of output contributions, then the adjoint of a
  window gather (col2im) adds the windows up. The 4x4/2/1 shape makes that cheap: kernel row
  ``kh = 2*qh + rh`` of input row i lands on padded output row ``2*(i + qh) + rh``, so with the
  padded output viewed as (rows/2, 2, cols/2, 2) the 16 taps are four strided slice-adds
  (``_scatter_windows_torch``; the CPU library's ``conv_windows`` does it ~10x faster). The
  backward gathers the output gradient's windows for two GEMMs.
- Many output channels: torch's forward, and a backward made of the adjoint operations, which
  oneDNN runs fast: the input gradient is ``conv2d(grad, weight)`` and the weight gradient is
  that convolution's weight gradient at output gradient ``x`` (oneDNN's own transposed-
  convolution weight gradient ran at ~65 GFLOP/s, the adjoint's at ~130).

Elsewhere (CUDA, other dtypes or shapes, torch.compile, torch.func transforms) the layer runs
torch's own code. (The encoder's 1-channel first convolution was tried the same way and was not
faster than oneDNN: it stays nn.Conv2d.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastfvae.backends.native import host_helpers
from fastfvae.ops._register import without_storage

FEW_CHANNELS = 4  # at most this many output channels: the GEMM path


def _paper_shape(layer) -> bool:
    """4x4 kernel, stride 2, padding 1, plain (no groups, dilation, output padding or other padding mode)."""
    return (layer.kernel_size == (4, 4) and layer.stride == (2, 2) and layer.padding == (1, 1)
            and layer.dilation == (1, 1) and layer.groups == 1 and layer.padding_mode == "zeros"
            and not any(getattr(layer, "output_padding", (0, 0))))


def _fast_path(x: Tensor, weight: Tensor) -> bool:
    """The CPU paths apply: CPU, float32/float64 (B, C, h, w) input, eager autograd."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and weight.dtype == x.dtype
            and x.dim() == 4 and x.numel() > 0
            and not torch.compiler.is_compiling() and not torch._C._are_functorch_transforms_active())


def _native_windows() -> bool:
    """The CPU library's conv_windows helpers are there (kernels/cpu/conv_windows.cpp)."""
    global _NATIVE
    if _NATIVE is None:
        _NATIVE = host_helpers.conv_windows_available() is None
    return _NATIVE


_NATIVE = None


def _gather_windows(x: Tensor, h: int, w: int) -> Tensor:
    """_gather_windows_torch, by the CPU library when it is there (~3x faster), no graph is
    being recorded (a backward with create_graph=True differentiates the torch form) and x has
    storage (batched gradients of jacobian(vectorize=True) have none)."""
    if _native_windows() and not torch.is_grad_enabled() and not without_storage((x,)):
        return host_helpers.conv_windows_gather(x)
    return _gather_windows_torch(x, h, w)


def _scatter_windows(windows: Tensor, batch: int, channels: int, h: int, w: int) -> Tensor:
    """_scatter_windows_torch, by the CPU library when it is there (~10x faster) and no graph is
    being recorded."""
    if _native_windows() and not torch.is_grad_enabled() and not without_storage((windows,)):
        return host_helpers.conv_windows_scatter(windows, batch, channels, 2 * h, 2 * w)
    return _scatter_windows_torch(windows, batch, channels, h, w)


def _gather_windows_torch(x: Tensor, h: int, w: int) -> Tensor:
    """x: (B, C, 2h, 2w). Returns the 4x4 windows of stride 2 and padding 1 as the transpose of a
    (B*h*w, C*16) matrix: (C*16, B*h*w), row (c, kh, kw), column (b, i, j) holding
    x[b, c, 2i + kh - 1, 2j + kw - 1] (0 outside). This layout makes each of the four copies run
    along j (a long inner loop); a (b, i, j)-major one would copy runs of 2."""
    batch, channels = x.shape[:2]
    padded = F.pad(x, (1, 1, 1, 1)).view(batch, channels, h + 1, 2, w + 1, 2)  # (b, c, i', rh, j', rw)
    windows = x.new_empty(channels, 2, 2, 2, 2, batch, h, w)  # (c, qh, rh, qw, rw, b, i, j)
    for qh in (0, 1):
        for qw in (0, 1):
            part = padded[:, :, qh:qh + h, :, qw:qw + w, :]  # (b, c, i, rh, j, rw): padded row 2(i+qh)+rh
            windows[:, qh, :, qw, :] = part.permute(1, 3, 5, 0, 2, 4)
    return windows.view(channels * 16, batch * h * w)


def _scatter_windows_torch(windows: Tensor, batch: int, channels: int, h: int, w: int) -> Tensor:
    """The adjoint of _gather_windows_torch: windows (C*16, B*h*w) -> (B, C, 2h, 2w), each window's
    16 values added at rows 2i + kh - 1, columns 2j + kw - 1 (those in the padding dropped)."""
    parts = windows.view(channels, 2, 2, 2, 2, batch, h, w)  # (c, qh, rh, qw, rw, b, i, j)
    padded = windows.new_zeros(batch, channels, h + 1, 2, w + 1, 2)
    for qh in (0, 1):
        for qw in (0, 1):
            padded[:, :, qh:qh + h, :, qw:qw + w, :] += parts[:, qh, :, qw, :].permute(3, 0, 4, 1, 5, 2)
    return padded.view(batch, channels, 2 * h + 2, 2 * w + 2)[:, :, 1:-1, 1:-1]


def _rows(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B*H*W, C): a view for channels_last inputs, a copy otherwise."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _from_rows(rows: Tensor, batch: int, h: int, w: int) -> Tensor:
    """(B*h*w, C) -> (B, C, h, w) channels_last (a view)."""
    return rows.view(batch, h, w, rows.shape[1]).permute(0, 3, 1, 2)


class _WindowConvTranspose2d(torch.autograd.Function):
    """conv_transpose2d(x, weight, bias, stride 2, padding 1), 4x4 kernel, as one GEMM and the
    windows' scatter (module docstring). x (B, C, h, w); weight (C, O, 4, 4); bias (O,) or None.
    Output (B, O, 2h, 2w) contiguous."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        batch, channels, h, w = x.shape
        kernel = weight.reshape(channels, -1)                    # (C, O*16)
        windows = kernel.t() @ _rows(x).t()                      # (O*16, B*h*w): each pixel's window of outputs
        y = _scatter_windows(windows, batch, weight.shape[1], h, w)
        y = y.contiguous() if bias is None else y + bias.view(1, -1, 1, 1)
        ctx.save_for_backward(x, weight)  # inputs, not rows: a double backward must see x
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        batch, channels, h, w = x.shape
        grad_windows = _gather_windows(grad_y, h, w)             # (O*16, B*h*w)
        kernel = weight.reshape(channels, -1)                    # (C, O*16)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _from_rows(grad_windows.t() @ kernel.t(), batch, h, w)
        if ctx.needs_input_grad[1]:
            # (O*16, C) then transposed: that GEMM runs ~2x faster than the (C, O*16) one here.
            grad_w = (grad_windows @ _rows(x)).t().reshape(weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y.sum((0, 2, 3))
        return grad_x, grad_w, grad_b


class _AdjointBackwardConvTranspose2d(torch.autograd.Function):
    """conv_transpose2d(x, weight, bias, stride, padding) with torch's forward and a backward made
    of the adjoint convolution: grad_x = conv2d(grad_y, weight) and grad_weight = the weight
    gradient of that convolution at output gradient x (the same sum, sum_b,i,j x[b,c,i,j] *
    grad_y[b, o, s*i + kh - p, s*j + kw - p])."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.conv = (list(stride), list(padding), bias is not None)
        return F.conv_transpose2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        stride, padding, has_bias = ctx.conv
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad_y, weight, None, stride, padding)
        if ctx.needs_input_grad[1]:
            grad_w = torch.ops.aten.convolution_backward(
                x, grad_y, weight, None, stride, padding, [1, 1], False, [0, 0], 1, [False, True, False])[1]
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


class ConvTranspose2d(nn.ConvTranspose2d):
    """An nn.ConvTranspose2d; on a CPU float input with the paper's 4x4/2/1 shape, it runs as one
    GEMM and the windows' slice-adds with at most FEW_CHANNELS output channels, and with torch's
    forward and the adjoint convolutions' backward otherwise (module docstring)."""

    def forward(self, x: Tensor, output_size=None) -> Tensor:
        if output_size is None and _paper_shape(self) and _fast_path(x, self.weight):
            if self.out_channels <= FEW_CHANNELS:
                return _WindowConvTranspose2d.apply(x, self.weight, self.bias)
            return _AdjointBackwardConvTranspose2d.apply(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x, output_size)
