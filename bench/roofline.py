#!/usr/bin/env python3
"""The roofline of every fastfvae op on this machine: how close each op comes to its floor.

    python -m bench.roofline [--device cpu|cuda] [--rounds 15] [--json roofline.json]
    python bench/report.py roofline.json          # the same table in the benchmark report

First the machine's rates, measured here at the thread count in use (torch.get_num_threads):
memory bandwidth (copy and add of a large float32 tensor, bytes read + written per second), the
library's own Philox draw rates (normals as reparameterize_kl draws eps, uniforms as each
permute_dims key needs one Philox call), and for compute-bound work the rate of a simple FMA loop
and of the kernels' vectorised exp. On the CPU these are ffv_philox_fill and
kernels/cpu/roofline.cpp (the kernels' own code); on CUDA, Triton kernels (tl.randn / tl.rand are the Triton backend's draws, and the
CUDA library's Philox is bit-identical to them, DESIGN.md §8) and torch copies of a 256 MiB tensor.

Then every op, forward, backward and full (forward + backward), at the benchmark's large sizes,
all cases interleaved round by round with fresh inputs (setup untimed), so a shared machine's
noise hits every case alike. Each case's floor is the op's work at those rates (DESIGN.md §14
writes the formula per op):

    floor = bytes / bandwidth + normals / normal rate + uniforms / uniform rate
            + (FMAs + 12 · exps) / FMA rate

the terms added, not overlapped (a pass that draws and streams does both). `% of floor` is
floor / measured time: 100 % is the machine's limit for that amount of work. Ops whose floor is
microseconds (the logit losses) are bounded by the Python/autograd per-call floor instead, which
is measured too (an empty autograd.Function, one ctypes call) and reported beside them.

At sizes whose bytes fit the last-level cache the achieved rate can pass the DRAM bandwidth
(fresh inputs were just written, so they sit in cache): % of floor above 100 says so.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

F32 = 4  # bytes per float32 (and per int32 index)

CPU_OP_SIZES = [(16384, 64), (65536, 64)]
CUDA_OP_SIZES = [(65536, 64), (262144, 64), (1048576, 64)]
CPU_LOG_QZ_SIZES = [(512, 10), (2048, 10)]
CUDA_LOG_QZ_SIZES = [(2048, 10), (8192, 10)]
DIRECTIONS = ("forward", "backward", "full")


# ============================================================================== timing helpers
def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# The clock every measurement here reads: wall time, or (--clock thread, one thread only) the
# CPU time of the calling thread, which leaves out the time the thread waits descheduled. On a
# machine shared by many processes, a call of more than a few ms is almost always preempted for
# a whole time slice (12-16 ms stalls every ~4 ms of work were seen on a 2-core VM at load 10),
# so no wall-clock repeat of it is clean; its thread CPU time still is the call's own cost.
CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}
_clock = CLOCKS["wall"]


def set_clock(name: str) -> None:
    global _clock
    if name == "thread" and torch.get_num_threads() != 1:
        raise ValueError(f"--clock thread: measures one thread's CPU time, so it needs torch.set_num_threads(1) "
                         f"(OMP_NUM_THREADS=1); torch uses {torch.get_num_threads()} threads")
    _clock = CLOCKS[name]


def time_call(fn: Callable, device: str) -> float:
    synchronize(device)
    start = _clock()
    fn()
    synchronize(device)
    return _clock() - start


def best_and_median(fn: Callable, device: str, repeats: int) -> tuple[float, float]:
    """(min, median) seconds of ``repeats`` calls after one warm-up call."""
    fn()
    times = sorted(time_call(fn, device) for _ in range(repeats))
    return times[0], times[len(times) // 2]


# ============================================================================== machine rates
@dataclass
class Rates:
    """What the machine does per second at the thread count in use (min-time figures: other
    processes only ever add time, so the fastest repeat is the closest to the machine)."""

    device: str
    threads: int
    copy_gbps: float  # bytes read + written per second / 1e9, tensor copy
    add_gbps: float  # the same for c = a + b
    normals_per_s: float
    uniforms_per_s: float
    fma_per_s: float  # FMA operations (one lane each) per second
    exp_per_s: float
    normals_per_s_1thread: Optional[float] = None  # CPU: the per-thread rates
    uniforms_per_s_1thread: Optional[float] = None
    call_floor_us: dict = field(default_factory=dict)  # Python/autograd per-call floors (CPU)

    @property
    def bandwidth(self) -> float:
        """Bytes per second an op may move at best: the faster of copy and add."""
        return max(self.copy_gbps, self.add_gbps) * 1e9


def measure_bandwidth(device: str, repeats: int) -> tuple[float, float]:
    """GB/s of a copy and of an add of a 64 MiB (CPU) / 256 MiB (CUDA) float32 tensor."""
    numel = ((256 if device == "cuda" else 64) << 20) // F32
    a = torch.randn(numel, device=device)
    b = torch.randn(numel, device=device)
    c = torch.empty_like(a)
    copy_s, _ = best_and_median(lambda: c.copy_(a), device, repeats)
    add_s, _ = best_and_median(lambda: torch.add(a, b, out=c), device, repeats)
    return 2 * numel * F32 / copy_s / 1e9, 3 * numel * F32 / add_s / 1e9


def _cpu_library():
    """The CPU library's ctypes handle with the roofline probes declared, or None (and why)."""
    from fastfvae.backends import native

    library, reason = native.load("cpu")
    if library is None:
        return None, reason
    handle = library.handle
    try:
        handle.ffv_philox_fill.argtypes = (ctypes.c_int32, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                                           ctypes.c_void_p)
        handle.ffv_roofline_fma.argtypes = (ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p)
        handle.ffv_roofline_exp.argtypes = (ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p)
    except AttributeError:
        return None, f"{library.path.name} lacks the ffv_roofline_* probes; rebuild it (scripts/rebuild_native.sh)"
    for name in ("ffv_philox_fill", "ffv_roofline_fma", "ffv_roofline_exp", "ffv_abi_version"):
        getattr(handle, name).restype = ctypes.c_int
    return handle, None


def _checked(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"{what} failed with status {status}")


def measure_cpu_compute(repeats: int) -> dict:
    """Draw, FMA and exp rates of the CPU library's own code, at torch's thread count and on one
    thread. The outputs stay in L2 (1 MiB), so the draw rates are arithmetic, not memory."""
    handle, reason = _cpu_library()
    if handle is None:
        raise RuntimeError(f"the CPU library is not usable: {reason}")
    threads = torch.get_num_threads()
    n_draw = 1 << 18
    out = torch.empty(n_draw)
    seed = torch.tensor([1234], dtype=torch.int64)
    # 4 blocks of 4096 elements (kernels/cpu/roofline.cpp's unit) per thread: every thread busy.
    n_fma, fma_iterations = 4 * 4096 * threads, 5000
    n_exp, exp_iterations = 4 * 4096 * threads, 50

    def draws(kind: int) -> float:
        seconds, _ = best_and_median(lambda: _checked(handle.ffv_philox_fill(kind, seed.data_ptr(), n_draw,
                                                                             out.data_ptr(), None),
                                                      "ffv_philox_fill"), "cpu", repeats)
        return n_draw / seconds

    def fma() -> float:
        x = torch.rand(n_fma)
        seconds, _ = best_and_median(lambda: _checked(handle.ffv_roofline_fma(n_fma, fma_iterations, x.data_ptr(), None),
                                                      "ffv_roofline_fma"), "cpu", repeats)
        return n_fma * fma_iterations / seconds

    def exps() -> float:
        x = torch.rand(n_exp)
        seconds, _ = best_and_median(lambda: _checked(handle.ffv_roofline_exp(n_exp, exp_iterations, x.data_ptr(), None),
                                                      "ffv_roofline_exp"), "cpu", repeats)
        return n_exp * exp_iterations / seconds

    rates = {"normals_per_s": draws(0), "uniforms_per_s": draws(1), "fma_per_s": fma(), "exp_per_s": exps()}
    torch.set_num_threads(1)
    try:
        rates["normals_per_s_1thread"] = draws(0)
        rates["uniforms_per_s_1thread"] = draws(1)
    finally:
        torch.set_num_threads(threads)
    return rates


def measure_cuda_compute(repeats: int) -> dict:
    """Philox draw, FMA and exp rates of Triton kernels on the current GPU (256 MiB of draws:
    large enough to fill the GPU; written to HBM, so the draw rate includes that write)."""
    import triton
    import triton.language as tl

    @triton.jit
    def draw_kernel(out_ptr, seed, n, NORMAL: tl.constexpr, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        if NORMAL:
            values = tl.randn(seed, offsets)
        else:
            values = tl.rand(seed, offsets)
        tl.store(out_ptr + offsets, values, mask=offsets < n)

    @triton.jit
    def fma_kernel(x_ptr, n, iterations, EXP: tl.constexpr, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offsets, mask=offsets < n, other=0.0)
        for _ in range(iterations):
            if EXP:
                x = tl.exp(x * 0.1)
            else:
                x = x * 0.999 + 0.001
        tl.store(x_ptr + offsets, x, mask=offsets < n)

    block = 1024
    n_draw = (256 << 20) // F32
    out = torch.empty(n_draw, device="cuda")
    grid = (triton.cdiv(n_draw, block),)

    def draws(normal: bool) -> float:
        seconds, _ = best_and_median(lambda: draw_kernel[grid](out, 1234, n_draw, NORMAL=normal, BLOCK=block),
                                     "cuda", repeats)
        return n_draw / seconds

    n_compute = 1 << 22
    x = torch.rand(n_compute, device="cuda")
    compute_grid = (triton.cdiv(n_compute, block),)

    def compute(exp: bool, iterations: int) -> float:
        seconds, _ = best_and_median(lambda: fma_kernel[compute_grid](x, n_compute, iterations, EXP=exp, BLOCK=block),
                                     "cuda", repeats)
        return n_compute * iterations / seconds

    return {"normals_per_s": draws(True), "uniforms_per_s": draws(False), "fma_per_s": compute(False, 2000),
            "exp_per_s": compute(True, 200)}


class _EmptyFunction(torch.autograd.Function):
    """A node that does nothing: the autograd cost every eager op pays, whatever its kernel."""

    @staticmethod
    def forward(ctx, x):
        return x.new_empty(())

    @staticmethod
    def backward(ctx, grad):
        return grad.new_zeros(()).expand(3, 2)


def measure_call_floors(repeats: int = 2000) -> dict:
    """Python/autograd per-call floors in microseconds (min over rounds of `repeats` calls):
    an empty autograd.Function's apply (forward only, with grad recorded), its apply plus
    backward, and one ctypes call into the CPU library (ffv_abi_version)."""
    x = torch.randn(3, 2, requires_grad=True)
    handle, _ = _cpu_library()

    def per_call(body: Callable) -> float:
        best = float("inf")
        for _ in range(7):
            start = _clock()
            for _ in range(repeats):
                body()
            best = min(best, (_clock() - start) / repeats)
        return best * 1e6

    floors = {"autograd_function_forward": per_call(lambda: _EmptyFunction.apply(x)),
              "autograd_function_forward_backward": per_call(lambda: _EmptyFunction.apply(x).backward())}
    if handle is not None:
        floors["ctypes_call"] = per_call(handle.ffv_abi_version)
    return floors


def measure_rates(device: str, repeats: int) -> Rates:
    copy_gbps, add_gbps = measure_bandwidth(device, repeats)
    compute = measure_cpu_compute(repeats) if device == "cpu" else measure_cuda_compute(repeats)
    return Rates(device=device, threads=torch.get_num_threads(), copy_gbps=copy_gbps, add_gbps=add_gbps,
                 call_floor_us=measure_call_floors() if device == "cpu" else {}, **compute)


# ============================================================================== floors per op
@dataclass
class Work:
    """What an op must do at the least: bytes moved, numbers drawn, arithmetic."""

    bytes: float = 0.0
    normals: float = 0.0
    uniforms: float = 0.0
    fmas: float = 0.0
    exps: float = 0.0

    def __add__(self, other: "Work") -> "Work":
        return Work(self.bytes + other.bytes, self.normals + other.normals, self.uniforms + other.uniforms,
                    self.fmas + other.fmas, self.exps + other.exps)

    def seconds(self, rates: Rates) -> float:
        return (self.bytes / rates.bandwidth + self.normals / rates.normals_per_s
                + self.uniforms / rates.uniforms_per_s + (self.fmas + EXP_FMAS * self.exps) / rates.fma_per_s)


# An exp counted as FMA-class operations: Cody-Waite reduction (3), a degree-7 polynomial (7),
# scaling by 2^k (2) -- log_qz's lean exp. (The probe's exp, cpu_math.h's with its range
# handling, is slower; its rate is reported beside the FMA rate, not used in floors.)
EXP_FMAS = 12


def reparameterize_kl_work(direction: str, batch: int, dim: int, stored_eps: bool = False) -> Work:
    """N = B·D float32. Forward reads mu, logvar and writes z (12N bytes), draws N normals; the
    backward reads grad_z, mu, logvar and writes grad_mu, grad_logvar (20N bytes) and draws the
    N normals again (eps regenerated from the seed). With a stored eps instead: the forward also
    writes eps (+4N), the backward reads it (+4N) and draws nothing. (KL terms: O(B), left out.)"""
    n = batch * dim
    forward = Work(bytes=(16 if stored_eps else 12) * n, normals=n)
    backward = Work(bytes=24 * n) if stored_eps else Work(bytes=20 * n, normals=n)
    return {"forward": forward, "backward": backward, "full": forward + backward}[direction]


def permute_dims_work(direction: str, batch: int, dim: int) -> Work:
    """N = B·D float32. Forward reads z, writes out and the int32 index the backward needs (12N
    bytes) and makes one Philox call per element for its sort key (N uniforms); the sort itself
    (a linear counting sort of random keys) is not counted. Backward reads grad_out and the
    index and writes grad_z (12N bytes)."""
    n = batch * dim
    forward = Work(bytes=12 * n, uniforms=n)
    backward = Work(bytes=12 * n)
    return {"forward": forward, "backward": backward, "full": forward + backward}[direction]


def logit_loss_work(direction: str, batch: int, inputs: int) -> Work:
    """tc_loss (1 input) and discriminator_loss (2): (B, 2) float32 logits per input; the
    forward reads them (8B bytes each), the backward writes their gradients (8B bytes each)
    (a log-sum-exp per row: 2 exps each, negligible beside the bytes at these sizes)."""
    forward = Work(bytes=8 * batch * inputs, exps=2 * batch * (inputs - 1))
    backward = Work(bytes=8 * batch * inputs, exps=2 * batch * (inputs - 1))
    return {"forward": forward, "backward": backward, "full": forward + backward}[direction]


def log_qz_work(direction: str, batch: int, dim: int) -> Work:
    """M = K = B queries and components, D dims: B²D Gaussian terms m = c - 0.5 (z - mu)² iv.
    Forward per term: 3 FMA-class operations (difference, square-scale, add) and 1 exp (the
    per-dimension log-sum-exp needs exp(m - max) of every term; the joint one needs B² more,
    negligible). Backward per term: the term again (3) and its exp (1), then G = g P + h P_d (2),
    r = (z - mu) iv (1) and three accumulations (grad_z, grad_mu, grad_logvar: 4) = 10 and 1 exp.
    Bytes are O((B + K) D): negligible."""
    terms = batch * batch * dim
    forward = Work(fmas=3 * terms, exps=terms)
    backward = Work(fmas=10 * terms, exps=terms)
    return {"forward": forward, "backward": backward, "full": forward + backward}[direction]


# ============================================================================== the cases
@dataclass
class Case:
    op: str
    variant: str  # "" or e.g. "stored eps" (an alternative data flow timed for comparison)
    direction: str
    batch: int
    dim: int
    work: Work
    setup: Callable  # () -> args of run
    run: Callable
    times: list = field(default_factory=list)


def _leaf(shape, device, scale=1.0):
    return (torch.randn(shape, device=device) * scale).requires_grad_()


def _directional(direction: str, make_inputs: Callable, forward: Callable, grads: Callable):
    """(setup, run) for one direction: backward runs the forward in setup (untimed)."""
    if direction == "forward":
        def setup():
            return (make_inputs(),)

        def run(inputs):
            forward(inputs)
    elif direction == "backward":
        def setup():
            inputs = make_inputs()
            outputs = forward(inputs)
            return outputs, grads(inputs)

        def run(outputs, gradients):
            torch.autograd.backward(outputs, gradients)
    else:
        def setup():
            inputs = make_inputs()
            return inputs, grads(inputs)

        def run(inputs, gradients):
            torch.autograd.backward(forward(inputs), gradients)
    return setup, run


def _regenerating(forward: Callable) -> Callable:
    """``forward`` run with the CPU op's kept-eps path switched off (eps regenerated in the
    backward), for the comparison of the two data flows."""
    import importlib

    module = importlib.import_module("fastfvae.ops.reparameterize_kl")

    def run(inputs):
        threshold = module._KEEP_NOISE_MIN_ELEMENTS
        module._KEEP_NOISE_MIN_ELEMENTS = float("inf")
        try:
            return forward(inputs)
        finally:
            module._KEEP_NOISE_MIN_ELEMENTS = threshold

    return run


def build_cases(device: str, op_sizes, log_qz_sizes) -> list[Case]:
    import fastfvae.functional as ffv

    cases = []

    def add(op, variant, batch, dim, work_fn, make_inputs, forward, grads):
        for direction in DIRECTIONS:
            setup, run = _directional(direction, make_inputs, forward, grads)
            cases.append(Case(op, variant, direction, batch, dim, work_fn(direction), setup, run))

    for batch, dim in op_sizes:
        def rk_inputs(b=batch, d=dim):
            return {"mu": _leaf((b, d), device), "logvar": _leaf((b, d), device, 0.5)}

        def rk_grads(x, b=batch, d=dim):
            return torch.randn(b, d, device=device), torch.randn((), device=device)

        # The op's own data flow on this device: the eager CPU path keeps its drawn eps for the
        # backward, CUDA regenerates it (fastfvae/ops/reparameterize_kl.py, _keeps_noise).
        keeps = device == "cpu"
        add("reparameterize_kl", "", batch, dim,
            lambda dr, b=batch, d=dim: reparameterize_kl_work(dr, b, d, stored_eps=keeps),
            rk_inputs, lambda x: ffv.reparameterize_kl(x["mu"], x["logvar"]), rk_grads)
        if keeps:  # the other data flow, timed too: eps regenerated in the backward
            add("reparameterize_kl", "eps regenerated", batch, dim,
                lambda dr, b=batch, d=dim: reparameterize_kl_work(dr, b, d),
                rk_inputs, _regenerating(lambda x: ffv.reparameterize_kl(x["mu"], x["logvar"])), rk_grads)
        else:  # the stored data flow: eps drawn beforehand (untimed) and given; the floor counts
            # the forward's draw and write of it, which this timing leaves out
            add("reparameterize_kl", "eps given", batch, dim,
                lambda dr, b=batch, d=dim: reparameterize_kl_work(dr, b, d, stored_eps=True),
                lambda b=batch, d=dim: {**rk_inputs(b, d), "eps": torch.randn(b, d, device=device)},
                lambda x: ffv.reparameterize_kl(x["mu"], x["logvar"], eps=x["eps"]), rk_grads)

        add("permute_dims", "", batch, dim, lambda dr, b=batch, d=dim: permute_dims_work(dr, b, d),
            lambda b=batch, d=dim: {"z": _leaf((b, d), device)}, lambda x: (ffv.permute_dims(x["z"]),),
            lambda x, b=batch, d=dim: (torch.randn(b, d, device=device),))

        add("tc_loss", "", batch, 2, lambda dr, b=batch: logit_loss_work(dr, b, 1),
            lambda b=batch: {"logits": _leaf((b, 2), device)}, lambda x: (ffv.tc_loss(x["logits"]),),
            lambda x: (torch.randn((), device=device),))

        add("discriminator_loss", "", batch, 2, lambda dr, b=batch: logit_loss_work(dr, b, 2),
            lambda b=batch: {"real": _leaf((b, 2), device), "perm": _leaf((b, 2), device)},
            lambda x: (ffv.discriminator_loss(x["real"], x["perm"]),),
            lambda x: (torch.randn((), device=device),))

    for batch, dim in log_qz_sizes:
        add("log_qz", "", batch, dim, lambda dr, b=batch, d=dim: log_qz_work(dr, b, d),
            lambda b=batch, d=dim: {"z": _leaf((b, d), device), "mu": _leaf((b, d), device),
                                    "logvar": _leaf((b, d), device, 0.5)},
            lambda x: ffv.log_qz(x["z"], x["mu"], x["logvar"], dataset_size=100000),
            lambda x, b=batch: (torch.randn(b, device=device), torch.randn(b, device=device)))
    return cases


def run_interleaved(cases: list[Case], device: str, rounds: int) -> None:
    """Every case once per round (after one warm-up round), fresh inputs each time."""
    for round_index in range(rounds + 1):
        for case in cases:
            args = case.setup()
            seconds = time_call(lambda: case.run(*args), device)
            if round_index:
                case.times.append(seconds)


# ============================================================================== report
def rows_of(cases: list[Case], rates: Rates) -> list[dict]:
    rows = []
    for case in cases:
        floor = case.work.seconds(rates)
        median, best = statistics.median(case.times), min(case.times)
        rows.append({"op": case.op, "variant": case.variant, "direction": case.direction, "B": case.batch,
                     "D": case.dim, "median_s": median, "min_s": best, "floor_s": floor,
                     "pct_of_floor_median": 100 * floor / median, "pct_of_floor_min": 100 * floor / best,
                     "work": case.work.__dict__, "rounds": len(case.times)})
    return rows


def machine_line() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    isa = "AVX-512" if " avx512f" in flags else ("AVX2" if " avx2" in flags else "no AVX2")
    return f"{name} ({isa}), {os.cpu_count()} cores"


def collect(device: str, rounds: int, repeats: int, op_sizes=None, log_qz_sizes=None, clock: str = "wall") -> dict:
    """Measure the rates (before and after the op timings; the faster of the two is kept),
    time every case interleaved and return the whole record (JSON-ready)."""
    op_sizes = op_sizes or (CUDA_OP_SIZES if device == "cuda" else CPU_OP_SIZES)
    log_qz_sizes = log_qz_sizes or (CUDA_LOG_QZ_SIZES if device == "cuda" else CPU_LOG_QZ_SIZES)
    set_clock(clock)
    retained = False
    if device == "cpu":  # as the benchmarks and the fastfvae commands do (bench/README.md)
        from fastfvae.memory import retain_freed_memory

        retained = retain_freed_memory()
    load_start = os.getloadavg()[0]
    before = measure_rates(device, repeats)
    cases = build_cases(device, op_sizes, log_qz_sizes)
    run_interleaved(cases, device, rounds)
    after = measure_rates(device, repeats)
    best = Rates(**{key: (max(getattr(before, key), getattr(after, key))
                          if isinstance(getattr(before, key), float) else getattr(before, key))
                    for key in before.__dict__})
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    return {"roofline": {
        "device": device, "machine": machine_line(), "gpu": gpu, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "clock": clock, "freed_memory_retained": retained, "load_average": [load_start, os.getloadavg()[0]],
        "rounds": rounds, "rates": best.__dict__, "rates_before": before.__dict__, "rates_after": after.__dict__,
        "rows": rows_of(cases, best), "datetime": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }}


def render(record: dict) -> str:
    """The roofline table in markdown (bench/report.py's renderer: one format everywhere)."""
    from bench.report import roofline_lines

    return "\n".join(roofline_lines(record))


def cuda_roofline(rounds: int = 10, repeats: int = 10) -> dict:
    """The same harness on the current GPU (HBM bandwidth, Triton's Philox, the ops at the CUDA
    benchmark sizes); bench/gpu_check.sh's roofline stage calls it through main()."""
    if not torch.cuda.is_available():
        raise RuntimeError("cuda_roofline: no CUDA device")
    return collect("cuda", rounds, repeats)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timed rounds per case")
    parser.add_argument("--repeats", type=int, default=15, help="repeats of each rate measurement")
    parser.add_argument("--sizes", help="B×D list for the elementwise ops, e.g. 16384x64,65536x64")
    parser.add_argument("--log-qz-sizes", help="B×D list for log_qz, e.g. 512x10")
    parser.add_argument("--json", help="write the record here (bench/report.py renders it)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads first (default: torch's own)")
    parser.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                        help="wall time, or the calling thread's CPU time (with --threads 1: a loaded machine)")
    args = parser.parse_args(argv)

    def sizes(text):
        return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",")] if text else None

    if args.threads:
        torch.set_num_threads(args.threads)
    record = (cuda_roofline(args.rounds, args.repeats) if args.device == "cuda" and not args.sizes
              else collect(args.device, args.rounds, args.repeats, sizes(args.sizes), sizes(args.log_qz_sizes),
                           args.clock))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(record, handle, indent=1)
    print(render(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
