"""pytest configuration of the benchmarks: the mode, machine info for the report, shared fixtures.

Full mode when ``--benchmark-only`` is given (or FASTFVAE_BENCH_FULL=1); quick mode otherwise
(bench/common.py explains both).

Host memory: the session keeps freed memory as the ``fastfvae`` commands do
(fastfvae/memory.py: glibc's mmap threshold 32 MiB, no heap trimming), for fastfvae and the
baselines alike, so no side pays page faults for its activations every call;
FASTFVAE_BENCH_RETAIN_MEMORY=0 keeps glibc's defaults (the header says which).
"""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import pytest
import torch

from bench import common


def pytest_configure(config):
    full = bool(config.getoption("benchmark_only", False)) or os.environ.get("FASTFVAE_BENCH_FULL") == "1"
    if config.getoption("benchmark_disable", False) and os.environ.get("FASTFVAE_BENCH_FULL") != "1":
        full = False
    common.set_full_mode(full)
    config._fastfvae_loadavg_start = _loadavg()
    config._fastfvae_retained = False
    if os.environ.get("FASTFVAE_BENCH_RETAIN_MEMORY", "1") != "0":
        from fastfvae.memory import retain_freed_memory

        config._fastfvae_retained = retain_freed_memory()


def _loadavg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def pytest_report_header(config):
    mode = "full (all sizes, torch.compile baselines, timed rounds)" if common.full_mode() else (
        "quick (smallest size, no torch.compile, one call each; use --benchmark-only for the real run)")
    memory = "freed memory retained (fastfvae/memory.py)" if config._fastfvae_retained else "glibc malloc defaults"
    return [f"fastfvae bench: mode {mode}; devices {common.devices()}; torch threads {torch.get_num_threads()}; "
            f"host memory: {memory}"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    """The commit of the fastfvae being measured (the imported package's checkout), + dirty flag."""
    import fastfvae

    root = Path(fastfvae.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + (" (with uncommitted changes)" if dirty else "") if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def pytest_benchmark_update_machine_info(config, machine_info):
    """What bench/report.py prints in its header."""
    info = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "fastfvae_commit": _git_commit(),
        "mode": "full" if common.full_mode() else "quick",
        "loadavg_start": getattr(config, "_fastfvae_loadavg_start", None),
        "loadavg_end": _loadavg(),
        "cpu_memory_method": common.CPU_MEMORY_METHOD,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    machine_info["fastfvae"] = info


@pytest.fixture(scope="session")
def copy_gbps():
    """copy_gbps(device) -> GB/s of a large tensor copy, measured once per device in this run."""
    measured: dict[str, float] = {}

    def get(device: str) -> float:
        if device not in measured:
            measured[device] = common.measure_copy_gbps(device)
        return measured[device]

    return get


def pytest_collection_modifyitems(config, items):
    # torch.compile imports modules that raise a DeprecationWarning of torch's own; not ours to fix.
    for item in items:
        item.add_marker(pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"))
