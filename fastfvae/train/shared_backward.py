"""D's update in a FactorVAE step without a second backward through D for the real half
(DESIGN.md §13): the real half's layer gradients are the VAE backward's, scaled, and each layer's
weight gradient is one GEMM over both halves. Used by fastfvae/train/steps.py's FactorVAEStep.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _torch_module

from fastfvae.models import Discriminator


def _hooked_or_patched(module: nn.Module) -> bool:
    """Whether ``module`` has forward, forward-pre or backward hooks of its own, or a forward
    set on the instance (read from its __dict__: this runs for every module before every step)."""
    state = module.__dict__
    return bool(state["_forward_hooks"] or state["_forward_pre_hooks"] or state["_backward_hooks"]
                or state["_backward_pre_hooks"] or "forward" in state)


def _has_global_module_hooks() -> bool:
    """Whether hooks registered for every module (``nn.modules.module.register_module_*_hook``)
    are in force: ``SharedDiscriminatorBackward.run`` calls the layers, but its backward would
    not run their backward hooks."""
    return bool(_torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks
                or _torch_module._global_backward_hooks or _torch_module._global_backward_pre_hooks)


def _plain_linears(disc: nn.Module) -> Optional[list]:
    """The Linear layers of ``disc``'s net when the shared backward is exact for it as it is now
    (``SharedDiscriminatorBackward.supports``), else None. Exact types: a parametrized Linear
    (torch.nn.utils.parametrize) is a subclass of nn.Linear."""
    if type(disc) is not Discriminator or _has_global_module_hooks():
        return None
    net = disc._modules.get("net")
    if type(net) is not nn.Sequential or _hooked_or_patched(disc) or _hooked_or_patched(net):
        return None
    linears = []
    for module in net._modules.values():
        kind = type(module)
        if kind is nn.Linear:
            if "weight" not in module._parameters:  # torch.nn.utils.spectral_norm's weight_orig
                return None
            linears.append(module)
        elif kind is not nn.LeakyReLU or module.inplace:
            return None
        if _hooked_or_patched(module):
            return None
    # set_grads reads the logits' gradient at the last Linear's output: it must be the last
    # module and give the two logits.
    if not linears or linears[-1] is not module or module.out_features != 2:
        return None
    return linears


class DiscriminatorPass(NamedTuple):
    """One forward of the discriminator's MLP with what its backward needs: the logits (B, 2),
    each Linear layer's input (B, in) and output (B, out, still in the autograd graph)."""

    logits: Tensor
    inputs: list
    outputs: list


class SharedDiscriminatorBackward:
    """D's update without a second backward through D for the real half, and with one GEMM per
    layer over both halves (DESIGN.md §13).

    D's logits on z enter the VAE loss only through tc = mean_i (l_i0 - l_i1): the VAE's
    backward sends t_i * (1, -1) into row i's logits (t_i = gamma / B) and leaves
    t_i * dDelta_i/d(output of layer l) at each Linear layer's output, Delta = l0 - l1. The
    discriminator loss on the same logits (its real half: D's weights have not changed since) is
    a function of Delta too: its logit gradient is s_i * (1, -1) (softmax minus one-hot,
    p0 - 1 = -p1, up to rounding), so its gradient at layer l's output is (s_i / t_i) times the
    VAE backward's, with s_i = (g_i0 - g_i1) / 2 and t_i likewise. The permuted half's layer
    gradients come from one input-gradient pass (``autograd.grad``, no weight gradients). Each
    layer's weight gradient is then one GEMM over the 2B rows of both halves,
    grad_W = delta^T [x_real; x_perm], grad_b = sum of delta: GEMMs of 2B rows run ~1.6x faster
    per FLOP than two of B rows on the CPU (B = 64; bench/RESULTS.md).

    ``run(z)`` is D's forward (the VAE's backward also returns the gradients at its
    ``outputs``), ``set_grads(real, real_deltas, perm, d_loss, d_real)`` computes D's gradients
    into its parameters' ``.grad``. Needs gamma != 0 (t = 0 otherwise) and a D that is a plain
    stack of Linear layers and out-of-place activations (``supports``).
    """

    def __init__(self, disc: Discriminator):
        if not self.supports(disc):
            raise ValueError("disc: expected a Discriminator whose net is Linear and LeakyReLU(inplace=False) layers "
                             "with no hooks or parametrizations")
        self.net = disc.net
        self.linears = _plain_linears(disc)

    @staticmethod
    def supports(disc: nn.Module) -> bool:
        """D's forward is its net's layers in turn, plain Linear or out-of-place LeakyReLU (an
        in-place activation would overwrite the Linear outputs whose gradients are read), with
        nothing that ``run`` would skip or ``set_grads`` would miss: no hooks on D, its net or
        its layers, no global module hooks, no parametrization (spectral_norm, weight_norm: a
        parametrized layer's weight is computed, so a gradient written into it reaches nothing).
        Checked before every step (``exact_for``): D may change after the step is built."""
        return _plain_linears(disc) is not None

    def exact_for(self, disc: nn.Module) -> bool:
        """Whether the shared backward is exact for ``disc`` as it is now (``supports``), taking
        its current layers (a net whose plain layers were replaced since the last step). A few
        microseconds for the paper's 13-module D (bench/RESULTS.md)."""
        linears = _plain_linears(disc)
        if linears is None:
            return False
        self.net, self.linears = disc.net, linears
        return True

    def run(self, z: Tensor) -> DiscriminatorPass:
        inputs, outputs = [], []
        h = z
        for module in self.net:
            if isinstance(module, nn.Linear):
                inputs.append(h.detach())
                h = module(h)
                outputs.append(h)
            else:
                h = module(h)
        return DiscriminatorPass(h, inputs, outputs)

    @torch.no_grad()
    def set_grads(self, real: DiscriminatorPass, real_deltas: list, perm: DiscriminatorPass, d_loss: Tensor,
                  d_real: Tensor) -> None:
        """real: D's pass on z and real_deltas the VAE backward's gradients at its outputs; perm:
        D's pass on the permuted batch; d_loss: the discriminator loss of (d_real, perm.logits),
        d_real the detached real logits (requires_grad)."""
        with torch.enable_grad():
            g_real, *perm_deltas = torch.autograd.grad(d_loss, [d_real] + perm.outputs)
        g_tc = real_deltas[-1]  # t_i * (1, -1)
        scale = ((g_real[:, 0] - g_real[:, 1]) / (g_tc[:, 0] - g_tc[:, 1])).unsqueeze(1)  # s_i / t_i
        last = len(self.linears) - 1
        for index, layer in enumerate(self.linears):
            real_delta = g_real if index == last else real_deltas[index] * scale
            delta = torch.cat([real_delta, perm_deltas[index]])
            layer.weight.grad = delta.t() @ torch.cat([real.inputs[index], perm.inputs[index]])
            if layer.bias is not None:
                layer.bias.grad = delta.sum(0)
