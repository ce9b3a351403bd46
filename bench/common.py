"""The machinery every benchmark shares: modes, sizes, backends, timing, memory, bandwidth.

A benchmark is one (op, direction, size, device, implementation). Its pytest-benchmark group is
``f"{op}-{direction}-B{B}-D{D}-{device}"`` so that each table compares like with like, and its
``extra_info`` says which implementation it is (``impl``, ``role`` = "fastfvae" | "baseline")
plus peak memory and bytes moved; ``bench/report.py`` turns that into ratios.

Two modes (bench/conftest.py picks one per run):
- full  (``pytest bench/ --benchmark-only``, or FASTFVAE_BENCH_FULL=1): every size, the
  ``torch.compile`` baselines, timed rounds.
- quick (anything else: plain ``pytest bench/``, ``--benchmark-disable``): the smallest size of
  each group only, no ``torch.compile`` baselines, every body run once. This is what
  tests/test_bench_smoke.py runs, so a broken benchmark fails CI without the slow suite.

Timing: inputs are made fresh for every round by a setup function outside the timed
region; CUDA work is synchronised inside the timed function (and at the end of setup, so a
round starts on an idle device); two untimed warm-up calls come first (they compile, load and
allocate), and the second one sizes the number of rounds to a time budget.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch

# ----------------------------------------------------------------------------------- mode
_FULL = False


def set_full_mode(full: bool) -> None:
    global _FULL
    _FULL = bool(full)


def full_mode() -> bool:
    return _FULL


def quick_skip_reason() -> str:
    return "quick mode runs the smallest size only; run `pytest bench/ --benchmark-only` for all"


# ----------------------------------------------------------------------------------- devices
def devices() -> list[str]:
    """'cpu' always, 'cuda' when a CUDA device is present. FASTFVAE_BENCH_DEVICES=cpu,cuda narrows it."""
    found = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    wanted = os.environ.get("FASTFVAE_BENCH_DEVICES")
    if wanted:
        found = [d for d in found if d in wanted.split(",")]
    return found


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------- sizes
# (B, D) per op family. CUDA adds sizes that fill the chip. Quick mode keeps the first only.
OP_SIZES = [(64, 10), (256, 10), (4096, 32), (65536, 64)]
CUDA_EXTRA_SIZES = [(262144, 64), (1048576, 64)]
PERMUTE_EXTRA_SIZES = [(1024, 32)]  # permute >= 5x the randperm loop at (1024, 32)
# The loss head's largest CPU size is its large-B target's (16384, 64): (65536, 64) runs seconds per call on
# 2 cores (the 1Konny loop, the compiled reference) and is left to CUDA.
LOSS_HEAD_SIZES = [(64, 10), (256, 10), (4096, 32), (16384, 64)]
LOSS_HEAD_CUDA_EXTRA = [(65536, 64), (262144, 64)]
LOG_QZ_SIZES = [(512, 10), (2048, 10)]
LOG_QZ_CUDA_EXTRA = [(8192, 10)]
TRAIN_STEP_SIZES = [(64, 10)]  # the paper's batch 64 and z 10
TRAIN_STEP_CUDA_EXTRA = [(512, 10)]
DIRECTIONS = ("forward", "backward", "full")


def sizes_for(device: str, cpu_sizes, cuda_extra=()) -> list[tuple[int, int]]:
    sizes = sorted(set(cpu_sizes) | (set(cuda_extra) if device == "cuda" else set()))
    return sizes if full_mode() else sizes[:1]


# ----------------------------------------------------------------------------------- implementations
@dataclass(frozen=True)
class Impl:
    """One implementation in a group.

    name: shown in tables ("fastfvae[native]", "eager-1konny", "compiled-reference", ...).
    role: "fastfvae" or "baseline".
    make: () -> forward callable (inputs dict -> tuple of output tensors); None when skipped.
    skip: why this implementation cannot run here (None when it can).
    compiled: True for torch.compile baselines (skipped in quick mode).
    """

    name: str
    role: str
    make: Optional[Callable[[], Callable]] = None
    skip: Optional[str] = None
    compiled: bool = False
    compile_key: Optional[str] = None


def available_backends(op: str, device: str) -> tuple[list[str], dict[str, str]]:
    """(backends to benchmark, {backend: why not}) for ``op`` on ``device`` in float32.

    "reference" is the fallback and is measured through the eager baselines, so it is left out
    unless FASTFVAE_BENCH_BACKENDS names it; Triton on the CPU runs only in its interpreter, which
    is never benchmarked.
    """
    from fastfvae import backends

    wanted = os.environ.get("FASTFVAE_BENCH_BACKENDS")
    wanted = set(wanted.split(",")) if wanted else None
    chosen, why_not = [], {}
    for name, reason in backends.reasons(op, torch.device(device), torch.float32).items():
        if reason is None and not hasattr(backends.get_backend(name), f"{op}_forward"):
            reason = f"has no {op}_forward launcher"
        if name == "triton" and device == "cpu":
            reason = "runs on CPU only in its interpreter (never benchmarked)"
        if wanted is not None and name not in wanted:
            reason = reason or "not in FASTFVAE_BENCH_BACKENDS"
        elif wanted is None and name == "reference":
            reason = reason or "the fallback; measured as the eager baselines"
        if reason is None:
            chosen.append(name)
        else:
            why_not[name] = reason
    return chosen, why_not


def fastfvae_impls(op: str, device: str, make_forward: Callable[[str], Callable],
                   needs: tuple[str, ...] = ()) -> list[Impl]:
    """One Impl per fastfvae backend that serves ``op`` (and every op in ``needs``) here, or one
    skipped Impl saying why none does."""
    try:
        names, why_not = available_backends(op, device)
        for other in needs:
            served, other_why = available_backends(other, device)
            why_not.update({n: f"{other}: {r}" for n, r in other_why.items() if n in names})
            names = [n for n in names if n in served]
    except Exception as error:  # noqa: BLE001 - a broken backend must show as a skip with its reason
        return [Impl("fastfvae", "fastfvae", skip=f"backend discovery failed: {error!r}")]
    if not names:
        reasons = "; ".join(f"{n}: {r}" for n, r in why_not.items())
        return [Impl("fastfvae", "fastfvae", skip=f"no fastfvae backend runs {op} on {device} ({reasons})")]
    return [Impl(f"fastfvae[{n}]", "fastfvae", make=(lambda n=n: make_forward(n))) for n in names]


def eager(name: str, forward: Callable) -> Impl:
    return Impl(name, "baseline", make=lambda: forward)


_COMPILED: dict = {}
_COMPILE_ERRORS: dict = {}


def compiled(name: str, key: str, fn: Callable, arg_names: tuple[str, ...]) -> Impl:
    """A torch.compile baseline: ``fn(*[inputs[n] for n in arg_names])`` compiled once per key
    (op and device) for every size (dynamic=True, so one graph serves all sizes).

    Compilation happens in the untimed warm-up; a failure skips the benchmark with the error.
    """

    def make():
        if os.environ.get("FASTFVAE_BENCH_COMPILE") == "0":
            pytest.skip("FASTFVAE_BENCH_COMPILE=0: torch.compile baselines left out")
        if key in _COMPILE_ERRORS:
            pytest.skip(_COMPILE_ERRORS[key])
        if key not in _COMPILED:
            _COMPILED[key] = torch.compile(fn, dynamic=True)
        compiled_fn = _COMPILED[key]
        return lambda inputs: compiled_fn(*(inputs[n] for n in arg_names))

    return Impl(name, "baseline", make=make, compiled=True, compile_key=key)


def record_compile_error(key: str, error: BaseException) -> str:
    text = f"torch.compile failed here: {type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
    _COMPILE_ERRORS[key] = text
    return text


# ----------------------------------------------------------------------------------- parametrisation
def cases(impls_for_device: Callable[[str], list[Impl]], sizes_for_device: Callable[[str], list],
          directions=DIRECTIONS) -> list:
    """pytest.param(device, direction, (B, D), impl) for every combination, with readable ids."""
    params = []
    for device in devices():
        impls = impls_for_device(device)
        for direction in directions:
            for size in sizes_for_device(device):
                for impl in impls:
                    params.append(pytest.param(
                        device, direction, size, impl,
                        id=f"{device}-{direction}-B{size[0]}-D{size[1]}-{impl.name}",
                    ))
    return params


# ----------------------------------------------------------------------------------- timing
# A per-benchmark time budget for the timed rounds (the setup and warm-up come on top).
BUDGET_S = {"cpu": 0.12, "cuda": 0.08}
MIN_ROUNDS = {"cpu": 3, "cuda": 10}
SLOW_CALL_S, SLOW_ROUNDS = 0.25, 2  # calls slower than this get 2 rounds (keeps the CPU suite < 5 min)
MAX_ROUNDS = {"cpu": 200, "cuda": 300}


def make_setup_and_target(device: str, direction: str, forward: Callable, make_inputs: Callable,
                          grad_outputs: Optional[Callable], self_contained: bool = False):
    """(setup, target) for pytest-benchmark's pedantic mode.

    forward: inputs dict -> tuple of outputs; grad_outputs: inputs dict -> tuple of gradients
    matching those outputs (fresh random, not all ones). setup makes fresh inputs (and, for
    "backward", runs the untimed forward); target is the timed work, synchronised on CUDA.
    self_contained: forward does all the work itself (a training step with its own backward
    and optimiser steps); target is just forward(inputs).
    """

    def sync():
        synchronize(device)

    if direction == "forward" or self_contained:
        def setup():
            inputs = make_inputs()
            sync()
            return (inputs,), {}

        def target(inputs):
            outputs = forward(inputs)
            sync()
            return outputs
    elif direction == "backward":
        def setup():
            inputs = make_inputs()
            outputs = forward(inputs)
            grads = grad_outputs(inputs)
            sync()
            return (outputs, grads), {}

        def target(outputs, grads):
            torch.autograd.backward(outputs, grads)
            sync()
    elif direction == "full":
        def setup():
            inputs = make_inputs()
            grads = grad_outputs(inputs)
            sync()
            return (inputs, grads), {}

        def target(inputs, grads):
            outputs = forward(inputs)
            torch.autograd.backward(outputs, grads)
            sync()
    else:
        raise ValueError(f"direction: expected one of {DIRECTIONS}, got {direction!r}")
    return setup, target


def run_benchmark(benchmark, *, op: str, device: str, direction: str, size: tuple[int, int], impl: Impl,
                  make_inputs: Callable, grad_outputs: Optional[Callable], bytes_moved: Optional[int] = None,
                  copy_gbps: Optional[float] = None, extra: Optional[dict] = None,
                  self_contained: bool = False) -> None:
    """Time ``impl`` on fresh inputs and record group, extra_info and peak memory (full passes)."""
    if impl.skip:
        pytest.skip(impl.skip)
    if impl.compiled and not full_mode():
        pytest.skip("quick mode skips torch.compile baselines (seconds of compilation each)")
    batch, dim = size
    benchmark.group = f"{op}-{direction}-B{batch}-D{dim}-{device}"
    benchmark.extra_info.update(op=op, direction=direction, B=batch, D=dim, device=device,
                                impl=impl.name, role=impl.role, dtype="float32", **(extra or {}))
    forward = impl.make()
    setup, target = make_setup_and_target(device, direction, forward, make_inputs, grad_outputs, self_contained)

    if full_mode() and not benchmark.disabled:
        per_call = _warm_up(impl, setup, target)
        rounds = int(min(MAX_ROUNDS[device], max(MIN_ROUNDS[device], BUDGET_S[device] / max(per_call, 1e-7))))
        if per_call > SLOW_CALL_S:
            rounds = SLOW_ROUNDS
        benchmark.pedantic(target, setup=setup, rounds=rounds)
    else:
        # quick mode (or --benchmark-disable): run the body once, record no timing.
        benchmark.disabled = True
        benchmark.pedantic(target, setup=setup, rounds=1)

    if direction == "full":
        benchmark.extra_info.update(peak_memory(device, setup, target))
    if bytes_moved is not None:
        benchmark.extra_info["bytes_moved"] = int(bytes_moved)
    if copy_gbps is not None:
        benchmark.extra_info["copy_gbps"] = float(copy_gbps)


def run_interleaved(benchmark, *, op: str, group: str, device: str, batch: int, dim: int, calls: dict,
                    rounds: int, warm_up_rounds: int = 2) -> None:
    """Run every entry of ``calls`` (name -> a function that makes its inputs untimed, runs one
    call and returns the seconds that call took) in turn, round by round, so that a shared
    machine's noise hits all of them alike. Records each one's median and fastest call in
    extra_info["interleaved"] (bench/report.py reads targets off them); the benchmark's own timing
    is of one round. ``rounds`` = 1 (quick mode) records no timing."""
    times: dict = {name: [] for name in calls}

    def one_round():
        for name, call in calls.items():
            times[name].append(call())

    for _ in range(warm_up_rounds):  # compilation, lazy loading, the allocator's and the kernels' buffers
        one_round()
    for name in times:
        times[name].clear()
    benchmark.group = group
    benchmark.extra_info.update(op=op, direction="full", B=batch, D=dim, device=device, impl="interleaved",
                                role="fastfvae", dtype="float32")
    if rounds == 1:
        benchmark.disabled = True
    benchmark.pedantic(one_round, rounds=rounds)
    benchmark.extra_info["interleaved"] = {
        name: {"median": statistics.median(t), "min": min(t), "calls": len(t)} for name, t in times.items()}


def _call_once(impl: Impl, setup, target) -> float:
    args, kwargs = setup()
    start = time.perf_counter()
    try:
        target(*args, **kwargs)
    except Exception as error:  # noqa: BLE001
        if impl.compiled and not isinstance(error, pytest.skip.Exception):
            pytest.skip(record_compile_error(impl.compile_key, error))
        raise
    return time.perf_counter() - start


def _warm_up(impl: Impl, setup, target) -> float:
    """Untimed calls (compile, lazy loading, allocator warm-up): two, or one when the first takes
    over a second (a second call would add only run time). Returns the last call's time, which
    sets the rounds: a process's first call of an op can be many times its usual time (the
    16384 x 64 loss head's first call, run alone, took over 0.25 s against ~10 ms, and got 2
    rounds where 9 were due)."""
    first = _call_once(impl, setup, target)
    return first if first > 1.0 and not impl.compiled else _call_once(impl, setup, target)


# ----------------------------------------------------------------------------------- memory
CPU_MEMORY_METHOD = ("cpu: peak_mem = peak of torch CPU allocator bytes live during the pass (torch.profiler "
                     "memory events); peak_rss = VmHWM - VmRSS after resetting VmHWM (/proc/self/clear_refs)")
CUDA_MEMORY_METHOD = "cuda: peak_mem = max_memory_allocated - memory_allocated before the pass"


def peak_memory(device: str, setup, target) -> dict:
    """Memory one pass needs above what was live before it (its inputs excluded), as extra_info.

    CUDA: ``peak_mem_bytes`` = torch.cuda.max_memory_allocated after reset_peak_memory_stats.
    CPU: torch keeps no peak counter for its CPU allocator, so
    - ``peak_mem_bytes``: the pass runs under torch.profiler(profile_memory=True) and the peak of
      the running sum of its allocation/free events is taken: every tensor torch allocates
      (outputs, saved activations, temporaries, gradients), not what a kernel library mallocs
      itself (the native kernels' scratch vectors);
    - ``peak_rss_bytes``: a second pass after resetting the kernel's peak-RSS counter
      (``echo 5 > /proc/self/clear_refs``): VmHWM - VmRSS. It sees every byte that became
      resident, kernel scratch included, but not memory malloc reuses from its own free lists,
      so it is a lower bound at small sizes and honest at large ones.
    """
    if device == "cuda":
        args, kwargs = setup()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        target(*args, **kwargs)
        torch.cuda.synchronize()
        return {"peak_mem_bytes": int(torch.cuda.max_memory_allocated() - before), "mem_method": CUDA_MEMORY_METHOD}
    info = {"mem_method": CPU_MEMORY_METHOD}
    args = kwargs = None
    try:
        args, kwargs = setup()
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            target(*args, **kwargs)
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events.sort(key=lambda e: e.start_ns())
        live = peak = 0
        for event in events:
            if event.device_type() == torch.autograd.DeviceType.CPU:
                live += event.nbytes()
                peak = max(peak, live)
        info["peak_mem_bytes"] = int(peak)
    except Exception as error:  # noqa: BLE001 - a profiler API change must not break timing
        info["peak_mem_error"] = f"{type(error).__name__}: {error}"
    args = kwargs = None  # free the first pass's tensors before the second
    try:
        args, kwargs = setup()
        Path("/proc/self/clear_refs").write_text("5")
        before = _proc_status_bytes("VmRSS")
        target(*args, **kwargs)
        info["peak_rss_bytes"] = max(0, _proc_status_bytes("VmHWM") - before)
    except (OSError, ValueError) as error:
        info["peak_rss_error"] = f"{type(error).__name__}: {error}"
    return info


def _proc_status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"{key} not in /proc/self/status")


# ----------------------------------------------------------------------------------- bandwidth
def measure_copy_gbps(device: str) -> float:
    """Achieved bandwidth of a large tensor copy (bytes read + written per second, GB/s)."""
    numel = (256 << 20) // 4 if device == "cuda" else (64 << 20) // 4
    if not full_mode():
        numel = (1 << 20) // 4
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(7 if full_mode() else 2):
        synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        times.append(time.perf_counter() - start)
    times.sort()
    median = times[len(times) // 2]
    return 2 * src.numel() * src.element_size() / median / 1e9


# ----------------------------------------------------------------------------------- inputs
def randn(shape, device: str, requires_grad: bool = False, scale: float = 1.0) -> torch.Tensor:
    t = torch.randn(shape, device=device) * scale
    return t.requires_grad_(requires_grad)
