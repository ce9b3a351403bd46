"""The ``step`` group: one whole FactorVAE training step of the paper's networks, data included.

- loop-1konny: ``bench.baselines.KonnyTrainStep`` (eager ops, per-column randperm, two
  unfused Adams) on batches built in the untimed setup (1Konny's DataLoader works ahead on
  other cores; giving it its batches for free favours the baseline);
- fastfvae[eager]: ``fastfvae.train.whole_step.WholeStep`` as the trainer runs it: batch indices
  drawn on the device, ``gather_images`` from the bit-packed table (random bytes of the full data
  set's size: the pixel values do not change the timing), the FactorVAE step (fused ops, fused
  Adam);
- fastfvae[compiled]: the same function under ``torch.compile(fullgraph=True)`` (``--compile``);
  its compilation runs in the untimed warm-up (report it from ``extra_info["compile_s"]``);
- fastfvae[graph] (CUDA): the same function captured in one CUDA graph and replayed (``--graph``).

Sizes: B = 64 (the paper), B = 512; z 10; the discriminator 6 x 1000. Targets: CPU
fastfvae[eager] >= 1.5x loop-1konny at B = 64; CUDA graph >= 5x loop-1konny.
"""
from __future__ import annotations

import time

import pytest
import torch

from bench import common

OP = "step"
Z_DIM = 10
SIZES = [(64, Z_DIM), (512, Z_DIM)]
FULL_ROWS, QUICK_ROWS = 737_280, 4096


_tables: dict = {}


def _table(device: str) -> torch.Tensor:
    rows = FULL_ROWS if common.full_mode() else QUICK_ROWS
    if (device, rows) not in _tables:
        g = torch.Generator().manual_seed(0)
        _tables[(device, rows)] = torch.randint(0, 256, (rows, 512), generator=g, dtype=torch.uint8).to(device)
    return _tables[(device, rows)]


def _whole_step(device: str, batch: int, mode: str):
    def make():
        from fastfvae.models import VAE
        from fastfvae.train import TrainConfig
        from fastfvae.train.steps import FactorVAEStep
        from fastfvae.train.whole_step import DeviceBatches, WholeStep

        torch.manual_seed(0)
        config = TrainConfig(batch_size=batch, z_dim=Z_DIM, device=device)
        vae = VAE(Z_DIM, 1).to(device, memory_format=torch.channels_last)
        step = WholeStep(FactorVAEStep(config, vae, FULL_ROWS), DeviceBatches(_table(device), batch, 2), mode)
        if mode == "compile":
            start = time.perf_counter()
            step()  # compiles (also a real step)
            _compile_seconds[(device, batch)] = time.perf_counter() - start
        return lambda x: step()
    return make


_compile_seconds: dict = {}


def _konny(device: str):
    def make():
        from bench.baselines import KonnyTrainStep
        from fastfvae.models import Decoder, Discriminator, Encoder

        torch.manual_seed(0)
        step = KonnyTrainStep(Encoder(Z_DIM).to(device), Decoder(Z_DIM).to(device), Discriminator(Z_DIM).to(device))
        return lambda x: step(x["x1"], x["x2"])
    return make


def impls_for(device: str, batch: int):
    modes = ["eager", "compile"] + (["graph"] if device == "cuda" else [])
    names = {"eager": "fastfvae[eager]", "compile": "fastfvae[compiled]", "graph": "fastfvae[graph]"}
    ours = [common.Impl(names[m], "fastfvae", make=_whole_step(device, batch, m), compiled=m == "compile",
                        compile_key=f"step-{device}-B{batch}") for m in modes]
    return ours + [common.Impl("loop-1konny", "baseline", make=_konny(device))]


def cases():
    params = []
    for device in common.devices():
        sizes = SIZES if common.full_mode() else SIZES[:1]
        for size in sizes:
            for impl in impls_for(device, size[0]):
                params.append(pytest.param(device, size, impl, id=f"{device}-full-B{size[0]}-D{size[1]}-{impl.name}"))
    return params


@pytest.mark.parametrize("device,size,impl", cases())
def test_step(benchmark, device, size, impl):
    batch, _ = size

    def make_inputs():
        images = (torch.rand(2, batch, 1, 64, 64, device=device) < 0.15).float()
        return {"x1": images[0], "x2": images[1]}

    common.run_benchmark(benchmark, op=OP, device=device, direction="full", size=size, impl=impl,
                         make_inputs=make_inputs, grad_outputs=None, self_contained=True)
    if (device, batch) in _compile_seconds and impl.name == "fastfvae[compiled]":
        benchmark.extra_info["compile_s"] = round(_compile_seconds[(device, batch)], 1)


# ---------------------------------------------------------------------------------------------
# The targets, judged on interleaved calls
# ---------------------------------------------------------------------------------------------
INTERLEAVED_PAIRS = 20  # per fastfvae mode, full mode (B = 64: ~6 s on a 2-core CPU)


@pytest.mark.parametrize("device", common.devices())
def test_step_interleaved(benchmark, device):
    """fastfvae's step (eager, and --graph on CUDA) and the 1Konny loop at B = 64, called in turn,
    so that a shared machine's noise hits all of them alike (the separate ``step`` rows above
    moved 1.0-1.6x between back-to-back runs on a 2-core CPU). Records each one's median and
    fastest call in extra_info["interleaved"] (bench/report.py checks the step targets on it);
    the benchmark's own timing is of one round of calls."""
    batch = 64
    modes = ["eager"] + (["graph"] if device == "cuda" else [])
    names = {"eager": "fastfvae[eager]", "graph": "fastfvae[graph]"}
    steps = {names[m]: _whole_step(device, batch, m)() for m in modes}
    konny = _konny(device)()
    images = (torch.rand(2, batch, 1, 64, 64, device=device) < 0.15).float()
    steps["loop-1konny"] = lambda x: konny({"x1": images[0], "x2": images[1]})

    def timed(step):
        def call():
            common.synchronize(device)
            start = time.perf_counter()
            step(None)
            common.synchronize(device)
            return time.perf_counter() - start
        return call

    common.run_interleaved(benchmark, op="step_interleaved", group=f"step-interleaved-B{batch}-{device}",
                           device=device, batch=batch, dim=Z_DIM, calls={name: timed(s) for name, s in steps.items()},
                           rounds=INTERLEAVED_PAIRS if common.full_mode() and not benchmark.disabled else 1,
                           warm_up_rounds=5 if device == "cuda" else 2)  # the graph mode captures on its 4th call
