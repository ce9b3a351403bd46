"""The benchmark suite stays runnable: every benchmark body runs once at the smallest size, the
report turns pytest-benchmark JSON into honest ratios, and the GPU check script stops cleanly
without a GPU. (The timed suite itself is `pytest bench/ --benchmark-only`, not part of CI.)"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _run(args, env_extra=None, timeout=600):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTFVAE_BENCH")}
    env.pop("FASTFVAE_BACKEND", None)
    env.update(env_extra or {})
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _pytest(*args, env_extra=None):
    return _run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], env_extra)


def test_every_benchmark_body_runs_once_in_quick_mode_and_full_mode_collects_everything():
    result = _pytest("bench", "-v", "-rs", env_extra={"FASTFVAE_BENCH_DEVICES": "cpu"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    passed = int(re.search(r"(\d+) passed", output).group(1))
    # the eager baselines alone: 4 ops x 3 directions (permute has two) + loss head x 2 + log_qz x 2 + train step
    assert passed >= 20, output[-4000:]
    # quick mode skips only torch.compile baselines and implementations that are missing here
    for line in output.splitlines():
        if line.startswith("SKIPPED"):
            assert "quick mode skips torch.compile" in line or "no fastfvae backend" in line, line
    # ... and runs the smallest size only
    ran = [line for line in output.splitlines() if "PASSED" in line]
    assert ran and not any("B65536" in line or "B4096" in line for line in ran), "\n".join(ran)

    full = _pytest("bench", "--collect-only", "-q", "--benchmark-only", env_extra={"FASTFVAE_BENCH_DEVICES": "cpu"})
    assert full.returncode == 0, full.stdout[-2000:]
    for needle in ("B65536-D64", "B1024-D32", "B16384-D64", "B2048-D10", "compiled-reference",
                   "randperm-loop-1konny", "argsort-gather", "test_train_step"):
        assert needle in full.stdout, needle


def _bench_row(op, direction, batch, dim, impl, role, median, minimum=None, **extra):
    return {
        "group": f"{op}-{direction}-B{batch}-D{dim}-cpu",
        "name": f"test_{op}[{impl}]",
        "extra_info": {"op": op, "direction": direction, "B": batch, "D": dim, "device": "cpu", "impl": impl,
                       "role": role, **extra},
        "stats": {"median": median, "min": minimum if minimum is not None else median * 0.9, "rounds": 10},
    }


def test_report_states_ratios_slower_cases_and_targets(tmp_path):
    rows = [
        # loss head at (64, 10): fastfvae 6x faster than 1Konny (its 5x target is retired: a table row only)
        _bench_row("loss_head", "full", 64, 10, "fastfvae[native]", "fastfvae", 100e-6, peak_mem_bytes=1000),
        _bench_row("loss_head", "full", 64, 10, "eager-1konny", "baseline", 600e-6, peak_mem_bytes=4000),
        # loss head at (16384, 64): its group says 4x, but the targets read the interleaved calls: 2x
        # 1Konny (NOT met) and 6x the compiled reference (met)
        _bench_row("loss_head", "full", 16384, 64, "fastfvae[native]", "fastfvae", 10e-3),
        _bench_row("loss_head", "full", 16384, 64, "eager-1konny", "baseline", 40e-3),
        _bench_row("loss_head_interleaved", "full", 16384, 64, "interleaved", "fastfvae", 0.09,
                   interleaved={"fastfvae[native]": {"median": 0.01, "min": 0.009, "calls": 30},
                                "eager-1konny": {"median": 0.02, "min": 0.019, "calls": 30},
                                "compiled-reference": {"median": 0.06, "min": 0.058, "calls": 30}}),
        # permute forward: slower than argsort at (64, 10) -> listed as slower, target NOT met
        _bench_row("permute_dims", "forward", 64, 10, "fastfvae[native]", "fastfvae", 50e-6,
                   bytes_moved=5120, copy_gbps=10.0),
        _bench_row("permute_dims", "forward", 64, 10, "argsort-gather", "baseline", 40e-6),
        _bench_row("permute_dims", "forward", 1024, 32, "fastfvae[native]", "fastfvae", 20e-6),
        _bench_row("permute_dims", "forward", 1024, 32, "randperm-loop-1konny", "baseline", 400e-6),
        _bench_row("permute_dims", "forward", 1024, 32, "argsort-gather", "baseline", 100e-6),
        # The interleaved step (1.6x: met) and the data path (8x: NOT met)
        _bench_row("step_interleaved", "full", 64, 10, "interleaved", "fastfvae", 0.3,
                   interleaved={"fastfvae[eager]": {"median": 0.1, "min": 0.09, "calls": 20},
                                "loop-1konny": {"median": 0.16, "min": 0.15, "calls": 20}}),
        _bench_row("data", "forward", 64, 4096, "fastfvae[native]", "fastfvae", 100e-6),
        _bench_row("data", "forward", 64, 4096, "render-procedural", "baseline", 800e-6),
    ]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"machine_info": {"fastfvae": {"cpu_model": "Test CPU", "cpu_count": 2,
                                                             "torch": "x", "mode": "full"}},
                                "commit_info": {"id": "abcdef123"}, "datetime": "2026-01-01T00:00:00",
                                "benchmarks": rows}))
    result = _run([sys.executable, str(ROOT / "bench" / "report.py"), str(path)])
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "Test CPU" in text
    # the 2x large-B loss head NOT met; the retired B=64 targets are no target rows
    assert re.search(r"loss head fwd\+bwd ≥ 3× 1Konny.*interleaved calls\) — fastfvae\[native\] \| 2\.00× "
                     r"\(min-time ratio 2\.11×\): 10\.00 ms vs 20\.00 ms, 30 calls each "
                     r"\| \*\*NOT met\*\* \|", text), text
    assert re.search(r"loss head fwd\+bwd ≥ 5× the compiled reference.*6\.00× .*\| met \|", text), text
    assert "### loss_head_interleaved" not in text  # a target-only row: no table of its own
    targets = text.split("### Targets", 1)[1].split("###", 1)[0]
    assert "loss head fwd+bwd ≥ 5× 1Konny" not in targets and "≥ 5× randperm" not in targets
    assert re.search(r"whole step ≥ 1\.5× .*cpu, fastfvae\[eager\].*1\.60× \(min-time ratio 1\.67×\).*\| met \|", text), text
    assert re.search(r"whole step ≥ 5× .*cuda.*not measured.*NOT met", text), text
    assert re.search(r"gather_images batch ≥ 10× .*B=64.*8\.00×.*NOT met", text), text
    assert re.search(r"faster than argsort\+gather.*64×10: 0\.80×.*NOT met\*\* at 64×10", text), text
    # the slower case is marked in its table and listed at the end
    assert "40.0 µs (0.80× **SLOWER**)" in text
    slower = text.split("### Where fastfvae is slower than a baseline", 1)[1]
    assert "permute_dims forward B=64 D=10 cpu: fastfvae[native] 50.0 µs vs argsort-gather 40.0 µs" in slower
    assert "loss_head" not in slower
    # GB/s against the copy: 5120 B / 50 us = 0.10 GB/s = 1% of 10 GB/s
    assert "0.10 (1%)" in text
    # targets with no data are NOT met, never silently dropped
    assert re.search(r"log_qz fwd\+bwd.*not measured.*NOT met", text), text


def test_gpu_check_stops_cleanly_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: bench/gpu_check.sh would run the whole check")
    dry = _run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"])
    assert dry.returncode == 0 and "dry run" in dry.stdout
    result = _run(["bash", str(ROOT / "bench" / "gpu_check.sh")],
                  env_extra={"PYTHON": sys.executable, "OUT": str(tmp_path)}, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = (tmp_path / "gpu_check.md").read_text()
    assert "no CUDA device" in summary and "| env | 0 |" in summary


def test_op_overhead_states_each_op_against_its_per_call_floor():
    """bench/op_overhead.py: a line of floors, then every op in every direction; the rows with a
    graph carry the empty-Function floor of the same body and the op's time over it."""
    result = _run([sys.executable, "-m", "bench.op_overhead", "--calls", "3", "--rounds", "1"], timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    floors = lines[0]["floors_us"]
    assert set(floors) >= {"forward (graph)", "forward+backward"} and all(t > 0 for t in floors.values())
    rows = {(r["op"], r["direction"]): r for r in lines[1:]}
    assert {op for op, _ in rows} == {"reparameterize_kl", "permute_dims", "tc_loss", "discriminator_loss", "log_qz"}
    for (op, direction), row in rows.items():
        if direction == "forward":
            assert "times_floor" not in row, row
            continue
        assert row["floor_us"] == round(floors[direction], 2), row
        assert row["times_floor"] == pytest.approx(row["fastfvae_us"] / floors[direction], abs=0.01), row
