"""fastfvae.layers.ConvTranspose2d: torch's transposed convolution, value for value, on every path.

Each path's outputs and gradients (input, weight, bias) are compared with float64 autograd of
torch's own ``conv_transpose2d`` (the textbook formula: an independent implementation), the CPU
library's window gather/scatter with their torch forms, and the double backward with
gradgradcheck. Tests check which path ran (``grad_fn``), so none passes through torch's layer
by accident.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

from fastfvae import layers
from fastfvae.backends import native

NATIVE = native.conv_windows_available()


def reference(x, weight, bias, grad_y):
    """float64 autograd of torch's conv_transpose2d: (y, grad_x, grad_weight, grad_bias)."""
    x, weight = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    bias = None if bias is None else bias.detach().double().requires_grad_()
    y = F.conv_transpose2d(x, weight, bias, 2, 1)
    grads = torch.autograd.grad(y, [x, weight] + ([bias] if bias is not None else []), grad_y.double())
    return [y.detach(), *grads]


def ours(layer, x, grad_y):
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    params = [layer.weight] + ([layer.bias] if layer.bias is not None else [])
    grads = torch.autograd.grad(y, [x] + params, grad_y)
    return y, [y.detach(), *grads]


def assert_close_to_scale(got, want, rel, name=""):
    """max |got - want| <= rel * max |want|: a float32 sum of K terms errs relative to the terms'
    size, not to a result that cancels (torch's own float32 layer errs ~1e-7..8e-7 so here)."""
    error = float((got.double() - want).abs().max())
    scale = float(want.abs().max())
    assert error <= rel * scale, f"{name}: max error {error:.3g} > {rel:g} x {scale:.3g}"


def path_of(y) -> str:
    return type(y.grad_fn).__name__


@pytest.mark.parametrize("in_channels,out_channels,size", [(32, 1, 32), (32, 3, 8), (64, 32, 8), (64, 64, 4), (5, 4, 6)])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_float64_conv_transpose2d(in_channels, out_channels, size, memory_format, bias, dtype):
    layer = layers.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=bias).to(dtype).to(memory_format=memory_format)
    x = torch.randn(3, in_channels, size, size, dtype=dtype).contiguous(memory_format=memory_format)
    grad_y = torch.randn(3, out_channels, 2 * size, 2 * size, dtype=dtype)
    y, got = ours(layer, x, grad_y)
    want = reference(x, layer.weight, layer.bias, grad_y)
    expected_path = "_WindowConvTranspose2dBackward" if out_channels <= layers.FEW_CHANNELS else \
        "_AdjointBackwardConvTranspose2dBackward"
    assert path_of(y) == expected_path
    assert y.shape == (3, out_channels, 2 * size, 2 * size) and y.dtype == dtype
    rel = 1e-13 if dtype == torch.float64 else 4e-6
    for name, g, w in zip(["y", "grad_x", "grad_weight", "grad_bias"], got, want):
        assert g.dtype == dtype, name
        assert_close_to_scale(g, w, rel, name)


def test_same_module_as_torchs():
    """Same parameters and state_dict keys: checkpoints load either way; an nn.ConvTranspose2d."""
    ours_layer = layers.ConvTranspose2d(32, 1, 4, 2, 1)
    theirs = nn.ConvTranspose2d(32, 1, 4, 2, 1)
    theirs.load_state_dict(ours_layer.state_dict())
    assert isinstance(ours_layer, nn.ConvTranspose2d)
    assert list(ours_layer.state_dict()) == list(theirs.state_dict())
    x = torch.randn(2, 32, 4, 4)
    torch.testing.assert_close(ours_layer(x), theirs(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("out_channels", [2, 6])
def test_double_backward(out_channels):
    layer = layers.ConvTranspose2d(3, out_channels, 4, 2, 1).double()
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)

    def fn(x, weight, bias):
        return torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (x,))

    args = (x, layer.weight.detach().clone().requires_grad_(), layer.bias.detach().clone().requires_grad_())
    assert path_of(fn(*args)).startswith("_Window" if out_channels <= layers.FEW_CHANNELS else "_Adjoint")
    assert gradcheck(fn, args)
    assert gradgradcheck(fn, args)


@pytest.mark.parametrize("layer,x,why", [
    (layers.ConvTranspose2d(8, 1, 3, 2, 1), torch.randn(2, 8, 5, 5), "kernel 3"),
    (layers.ConvTranspose2d(8, 1, 4, 2, 1), torch.randn(2, 8, 5, 5, dtype=torch.float16), "float16"),
    (layers.ConvTranspose2d(8, 1, 4, 2, 1, output_padding=1), torch.randn(2, 8, 5, 5), "output padding"),
    (layers.ConvTranspose2d(8, 4, 4, 2, 1, groups=2), torch.randn(2, 8, 5, 5), "groups"),
])
def test_other_cases_run_torchs_layer(layer, x, why):
    layer = layer.to(x.dtype)
    y = layer(x.requires_grad_())
    assert path_of(y) == "ConvolutionBackward0", why
    plain = nn.ConvTranspose2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                               layer.output_padding, layer.groups).to(x.dtype)
    plain.load_state_dict(layer.state_dict())
    torch.testing.assert_close(y, plain(x))


def test_torch_func_runs_torchs_layer():
    """torch.func transforms see torch's layer (the custom Functions have no vmap rule)."""
    layer = layers.ConvTranspose2d(4, 1, 4, 2, 1)
    x = torch.randn(3, 4, 4, 4)
    per_sample = torch.func.vmap(lambda xi: layer(xi.unsqueeze(0)).sum())(x)
    torch.testing.assert_close(per_sample, layer(x).sum((1, 2, 3)))
    grad = torch.func.grad(lambda xi: layer(xi).sum())(x)
    torch.testing.assert_close(grad, torch.autograd.grad(layer(x.requires_grad_()).sum(), x)[0])


@pytest.mark.parametrize("out_channels", [1, 3])
def test_torch_forms_without_the_cpu_library(monkeypatch, out_channels):
    """A build without conv_windows (or a backward recording a graph) uses the torch forms."""
    monkeypatch.setattr(layers, "_NATIVE", False)
    layer = layers.ConvTranspose2d(16, out_channels, 4, 2, 1)
    x = torch.randn(2, 16, 6, 4)
    grad_y = torch.randn(2, out_channels, 12, 8)
    y, got = ours(layer, x, grad_y)
    assert path_of(y) == "_WindowConvTranspose2dBackward"
    for g, w in zip(got, reference(x, layer.weight, layer.bias, grad_y)):
        assert_close_to_scale(g, w, 4e-6)


@pytest.mark.skipif(NATIVE is not None, reason=f"the CPU library's conv_windows: {NATIVE}")
class TestNativeWindows:
    @pytest.mark.parametrize("shape", [(64, 1, 64, 64), (3, 3, 8, 6), (1, 2, 2, 2)])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_gather_is_the_torch_form(self, shape, dtype):
        x = torch.randn(shape, dtype=dtype)
        h, w = shape[2] // 2, shape[3] // 2
        want = layers._gather_windows_torch(x, h, w)
        for strided in (x, x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3).contiguous().transpose(2, 3)):
            assert torch.equal(native.conv_windows_gather(strided), want)

    @pytest.mark.parametrize("shape", [(64, 1, 64, 64), (3, 3, 8, 6), (1, 2, 2, 2)])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_scatter_is_the_torch_form(self, shape, dtype):
        batch, channels, height, width = shape
        windows = torch.randn(channels * 16, batch * height * width // 4, dtype=dtype)
        want = layers._scatter_windows_torch(windows, batch, channels, height // 2, width // 2)
        for strided in (windows, windows.t().contiguous().t()):
            got = native.conv_windows_scatter(strided, batch, channels, height, width)
            assert got.is_contiguous() and got.shape == shape
            torch.testing.assert_close(got, want, rtol=0, atol=4 * torch.finfo(dtype).eps * windows.abs().max())

    def test_scatter_is_the_adjoint_of_gather(self):
        """<gather(x), W> = <x, scatter(W)>: the two kernels are each other's transpose."""
        x = torch.randn(4, 2, 10, 6, dtype=torch.float64)
        windows = torch.randn(32, 4 * 5 * 3, dtype=torch.float64)
        left = (native.conv_windows_gather(x) * windows).sum()
        right = (x * native.conv_windows_scatter(windows, 4, 2, 10, 6)).sum()
        torch.testing.assert_close(left, right, rtol=1e-12, atol=1e-12)

    def test_bad_input_is_refused_with_the_reason(self):
        with pytest.raises(ValueError, match="H and W must be even, got 5 x 4"):
            native.conv_windows_gather(torch.randn(1, 1, 5, 4))
        with pytest.raises(TypeError, match="float32=0 or float64=1"):
            native.conv_windows_gather(torch.randn(1, 1, 4, 4, dtype=torch.float16))


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 3), in_channels=st.integers(1, 5), out_channels=st.integers(1, 6),
       height=st.integers(1, 5), width=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_property_any_size_equals_torch(batch, in_channels, out_channels, height, width, seed):
    """Any batch, channel count and image size (both paths): torch's values in float64."""
    torch.manual_seed(seed)
    layer = layers.ConvTranspose2d(in_channels, out_channels, 4, 2, 1).double()
    x = torch.randn(batch, in_channels, height, width, dtype=torch.float64)
    grad_y = torch.randn(batch, out_channels, 2 * height, 2 * width, dtype=torch.float64)
    y, got = ours(layer, x, grad_y)
    assert path_of(y).startswith("_Window" if out_channels <= layers.FEW_CHANNELS else "_Adjoint")
    for g, w in zip(got, reference(x, layer.weight, layer.bias, grad_y)):
        assert_close_to_scale(g, w, 1e-13)
