"""D's update in a FactorVAE step without a second backward through D for the real half
(DESIGN.md §13): the real half's layer gradients are the VAE backward's, scaled, and each layer's
weight gradient is one GEMM over both halves. Used by fastfvae/train/steps.py's FactorVAEStep.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from fastfvae.models import Discriminator


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
            raise ValueError("disc: expected a Discriminator whose net is Linear and LeakyReLU(inplace=False) layers")
        self.net = disc.net
        self.linears = [m for m in disc.net if isinstance(m, nn.Linear)]

    @staticmethod
    def supports(disc: nn.Module) -> bool:
        """D's forward is its net's layers in turn, Linear or out-of-place LeakyReLU (an in-place
        activation would overwrite the Linear outputs whose gradients are read)."""
        net = getattr(disc, "net", None)
        return (type(disc) is Discriminator and isinstance(net, nn.Sequential)
                and all(isinstance(m, nn.Linear) or (isinstance(m, nn.LeakyReLU) and not m.inplace) for m in net))

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
