#!/usr/bin/env python3
"""How fast can the FactorVAE loss head be with PyTorch's eager autograd? (the retired 5x target at B=64)

    python -m bench.head_floor [--batch 64 --dim 10 --rounds 2000 --clock wall|thread]

Times one forward + backward of the loss head (bench/test_loss_head.py: reparameterise + KL,
TC term, a second reparameterised batch, permute_dims, discriminator loss) three ways, with the
fixed linear stand-in discriminator of the benchmark and without any network (the logits are
then inputs, and z gets a gradient as a decoder would give it):

- eager-1konny:  bench.baselines (the 1Konny-style code the targets are measured against);
- fastfvae:      the public fastfvae ops (backend "auto");
- null-ops:      the same autograd graph built from ``torch.autograd.Function`` nodes that do no
                 work at all (forward returns uninitialised tensors, backward returns cached
                 ones; no validation, dispatch, seed or kernel). No implementation of the head
                 on Python autograd Functions can be faster than this: it is the floor.
- network-only:  (with the linear stand-in only) nothing but the three discriminator calls and
                 their backward, on tensors that stand in for z, z.detach() and permute_dims(z'):
                 what every eager implementation pays, whatever its loss ops cost (even zero).

eager-1konny / null-ops is the largest speed-up over the 1Konny code that an implementation on
Python autograd Functions could show on this machine; eager-1konny / network-only bounds every
eager implementation. Medians over fresh inputs, like bench/common.py, the implementations'
rounds interleaved; ``--clock thread`` times one thread's CPU time (for a loaded machine).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from bench import baselines
from fastfvae import functional as ffv


# ------------------------------------------------------------------------------ null-ops floor
class _NullReparameterizeKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, logvar):
        ctx.grads = (torch.empty_like(mu), torch.empty_like(logvar))
        return torch.empty_like(mu), mu.new_empty(())

    @staticmethod
    def backward(ctx, grad_z, grad_kl):
        return ctx.grads


class _NullLogitLoss(torch.autograd.Function):
    """tc_loss (one logits input) or discriminator_loss (two)."""

    @staticmethod
    def forward(ctx, *logits):
        ctx.grads = tuple(torch.empty_like(t) for t in logits)
        return logits[0].new_empty(())

    @staticmethod
    def backward(ctx, grad):
        return ctx.grads


def null_ops_head(mu, logvar, mu2, logvar2, d_logits_fn):
    """The head's graph with no-op nodes: same calls, same autograd structure as fastfvae's."""
    z, kl = _NullReparameterizeKL.apply(mu, logvar)
    vae_tc = _NullLogitLoss.apply(d_logits_fn(z))
    z_prime, _ = _NullReparameterizeKL.apply(mu2, logvar2)
    z_pperm = torch.empty_like(z_prime)  # permute_dims of a detached tensor records no node
    d_loss = _NullLogitLoss.apply(d_logits_fn(z.detach()), d_logits_fn(z_pperm))
    return kl + vae_tc, d_loss


def fastfvae_head(mu, logvar, mu2, logvar2, d_logits_fn):
    return baselines.fastfvae_loss_head(mu, logvar, mu2, logvar2, d_logits_fn)


def network_only_head(mu, logvar, mu2, logvar2, d_logits_fn):
    """Only the discriminator calls of the head, on the leaves mu (for z) and mu2 (for the
    permuted z'); the two outputs sum their logits so that one backward covers all three calls."""
    d_z = d_logits_fn(mu)
    d_loss_inputs = d_logits_fn(mu.detach()) + d_logits_fn(mu2.detach())
    return d_z.sum(), d_loss_inputs.sum()


IMPLEMENTATIONS = {"eager-1konny": baselines.konny_loss_head, "fastfvae": fastfvae_head, "null-ops": null_ops_head}


# ------------------------------------------------------------------------------ the two heads
def with_linear(head, batch, dim):
    """The benchmark's head: a fixed linear map D -> 2 (weights with grad) as the discriminator."""

    def make_inputs():
        leaf = lambda *shape: torch.randn(*shape).requires_grad_()  # noqa: E731
        return [leaf(batch, dim), leaf(batch, dim), leaf(batch, dim), leaf(batch, dim), leaf(2, dim), leaf(2)]

    def run(mu, logvar, mu2, logvar2, weight, bias):
        outputs = head(mu, logvar, mu2, logvar2, lambda x: F.linear(x, weight, bias))
        torch.autograd.backward(outputs, (torch.ones(()), torch.ones(())))

    return make_inputs, run


def without_network(head, batch, dim):
    """No network: the three logits tensors are inputs (as if D had run), z gets a decoder-like
    gradient. The logits stand in for D(z), D(z.detach()) and D(permute_dims(z')) in call order."""

    def make_inputs():
        leaf = lambda *shape: torch.randn(*shape).requires_grad_()  # noqa: E731
        return [leaf(batch, dim), leaf(batch, dim), leaf(batch, dim), leaf(batch, dim),
                [leaf(batch, 2), leaf(batch, 2), leaf(batch, 2)], torch.randn(batch, dim)]

    def run(mu, logvar, mu2, logvar2, logits, grad_z):
        queue = list(logits)
        captured = {}

        def logits_of(x):  # hands out the next logits tensor; remembers z (the first argument)
            captured.setdefault("z", x)
            return queue.pop(0)

        vae_loss, d_loss = head(mu, logvar, mu2, logvar2, logits_of)
        torch.autograd.backward((vae_loss, d_loss, captured["z"]), (torch.ones(()), torch.ones(()), grad_z))

    return make_inputs, run


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


def interleaved_times(cases: dict, rounds: int, clock: str) -> dict[str, list[float]]:
    """{name: sorted per-round times in us}: the cases' rounds interleaved (case 1, case 2, ...,
    case 1, ...) on fresh inputs, so that a change in the machine's load hits every case alike.
    ``clock="thread"`` times the calling thread's CPU time: on a loaded machine the wall clock
    also counts other processes' time slices."""
    now = CLOCKS[clock]
    for _ in range(min(20, rounds)):
        for make_inputs, run in cases.values():
            run(*make_inputs())
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (make_inputs, run) in cases.items():
            inputs = make_inputs()
            start = now()
            run(*inputs)
            times[name].append((now() - start) * 1e6)
    return {name: sorted(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or the calling thread's CPU time (one thread on a loaded machine)")
    args = parser.parse_args()
    print(f"loss head fwd+bwd, B={args.batch}, D={args.dim}, cpu, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.clock} clock; median of {args.rounds} interleaved rounds "
          f"(us; min-time ratios in brackets)\n")
    print("| head | eager-1konny | fastfvae | null-ops | network-only | 1konny / fastfvae "
          "| 1konny / null-ops | 1konny / network-only |")
    print("|---|---|---|---|---|---|---|---|")
    for label, variant in (("with the linear stand-in D", with_linear), ("without a network", without_network)):
        heads = dict(IMPLEMENTATIONS, **({"network-only": network_only_head} if variant is with_linear else {}))
        times = interleaved_times({name: variant(head, args.batch, args.dim) for name, head in heads.items()},
                                  args.rounds, args.clock)
        median = {name: values[len(values) // 2] for name, values in times.items()}
        least = {name: values[0] for name, values in times.items()}

        def ratio(name):
            if name not in times:
                return "-"
            return f"{median['eager-1konny'] / median[name]:.2f}x [{least['eager-1konny'] / least[name]:.2f}x]"

        network = median.get("network-only")
        print(f"| {label} | {median['eager-1konny']:.1f} | {median['fastfvae']:.1f} | {median['null-ops']:.1f} | "
              f"{'-' if network is None else f'{network:.1f}'} | {ratio('fastfvae')} | {ratio('null-ops')} | "
              f"{ratio('network-only')} |")


if __name__ == "__main__":
    main()
