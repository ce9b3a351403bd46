"""Eager per-call overhead of the public ops at B=64, D=10 (it must not grow).

Times each op's forward alone (no gradient recorded), its forward with a graph recorded, and
forward+backward on the CPU with the default backend: the fastest of ``--rounds`` rounds of
``--calls`` calls (the minimum: load from other processes only ever adds time). Each row with a
graph also states the Python/autograd per-call floor it is held to (docs/DESIGN.md §14): the same
body around an empty ``autograd.Function`` (``floor_us``, and ``times_floor`` = the op's time over
it); the first line gives the floors, a ctypes call's among them. ``--compare MODULE`` also times
another importable copy of the package (e.g. an older tree with its package renamed) in the
same process, alternating round by round, so machine noise hits both alike:

    python -m bench.op_overhead [--compare fastfvae_before]
"""
from __future__ import annotations

import argparse
import importlib
import json
import time

import torch

from bench.roofline import _EmptyFunction, _cpu_library


def _cases(ops, batch: int, dim: int, dtype: torch.dtype):
    """op name -> make(grad) -> a body that runs the op once (and its backward when grad)."""
    g = torch.Generator().manual_seed(0)

    def leaf(*shape, grad):
        return torch.randn(*shape, generator=g).to(dtype).requires_grad_(grad)

    def reparameterize(grad):
        mu, logvar = leaf(batch, dim, grad=grad), leaf(batch, dim, grad=grad)
        return lambda: ops.reparameterize_kl(mu, logvar)[1]

    def permute(grad):
        z = leaf(batch, dim, grad=grad)
        return lambda: ops.permute_dims(z)

    def tc(grad):
        logits = leaf(batch, 2, grad=grad)
        return lambda: ops.tc_loss(logits)

    def disc(grad):
        real, perm = leaf(batch, 2, grad=grad), leaf(batch, 2, grad=grad)
        return lambda: ops.discriminator_loss(real, perm)

    def log_qz(grad):
        z, mu, logvar = (leaf(batch, dim, grad=grad) for _ in range(3))
        return lambda: ops.log_qz(z, mu, logvar, dataset_size=1000)[0]

    return {"reparameterize_kl": reparameterize, "permute_dims": permute, "tc_loss": tc,
            "discriminator_loss": disc, "log_qz": log_qz}


def _bodies(ops, batch: int, dim: int, dtype: torch.dtype) -> dict:
    """(op, direction) -> body."""
    bodies = {}
    for op, make in _cases(ops, batch, dim, dtype).items():
        bodies[(op, "forward")] = make(grad=False)
        with_grad = make(grad=True)
        bodies[(op, "forward (graph)")] = with_grad
        bodies[(op, "forward+backward")] = lambda f=with_grad: f().float().sum().backward()
    return bodies


def _floor_bodies() -> dict:
    """direction -> the body an op of that direction is held to: an empty autograd.Function in
    the op's place (with a graph), and one ctypes call into the CPU library (without)."""
    x = torch.randn(3, 2, requires_grad=True)
    floors = {"forward (graph)": lambda: _EmptyFunction.apply(x),
              "forward+backward": lambda: _EmptyFunction.apply(x).float().sum().backward()}
    handle, _ = _cpu_library()
    if handle is not None:
        floors["forward"] = handle.ffv_abi_version
    return floors


def _fastest(body, calls: int, rounds: int) -> float:
    _round(body, calls)  # warm-up
    return min(_round(body, calls) for _ in range(rounds))


def _round(body, calls: int) -> float:
    """Microseconds per call over one round of ``calls`` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        body()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", help="another importable copy of the package to time alongside")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=31)
    args = parser.parse_args()
    torch.set_num_threads(1)
    packages = {"fastfvae": importlib.import_module("fastfvae")}
    if args.compare:
        packages[args.compare] = importlib.import_module(args.compare)
    dtype = getattr(torch, args.dtype)
    bodies = {name: _bodies(package, args.batch, args.dim, dtype) for name, package in packages.items()}
    floors = {direction: _fastest(body, args.calls, args.rounds) for direction, body in _floor_bodies().items()}
    print(json.dumps({"floors_us": {direction: round(t, 2) for direction, t in floors.items()}}), flush=True)
    for key in bodies["fastfvae"]:
        times = {name: [] for name in packages}
        for name in packages:  # warm-up
            _round(bodies[name][key], args.calls)
        for _ in range(args.rounds):
            for name in packages:
                times[name].append(_round(bodies[name][key], args.calls))
        row = {"op": key[0], "direction": key[1], "dtype": args.dtype}
        row.update({f"{name}_us": round(min(t), 2) for name, t in times.items()})
        if args.compare:
            row["ratio"] = round(row["fastfvae_us"] / row[f"{args.compare}_us"], 3)
        if key[1] != "forward" and key[1] in floors:  # (a ctypes call is no floor for a whole op)
            row["floor_us"] = round(floors[key[1]], 2)
            row["times_floor"] = round(row["fastfvae_us"] / floors[key[1]], 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
