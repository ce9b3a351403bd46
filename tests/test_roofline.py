"""The roofline harness (bench/roofline.py): its probes compute what they claim (the library's
own Philox streams, FMA and exp loops), its floors follow docs/DESIGN.md §14, and a tiny run
goes end to end into bench/report.py's table. (Timings themselves are benchmarks, not tests.)"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import roofline
from fastfvae import reference

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def probes():
    handle, reason = roofline._cpu_library()
    if handle is None:
        pytest.skip(reason)
    return handle


@pytest.mark.parametrize("n", [1, 4095, 4096 * 3 + 17])
def test_draw_probe_is_the_kernels_philox_stream(probes, n):
    seed = 987654321
    seed_tensor = torch.tensor([seed], dtype=torch.int64)
    offsets = torch.arange(n, dtype=torch.int64)
    normals = torch.empty(n)
    assert probes.ffv_philox_fill(0, seed_tensor.data_ptr(), n, normals.data_ptr(), None) == 0
    # the normals reparameterize_kl draws for eps (element k of a B x D tensor has offset k)
    torch.testing.assert_close(normals, reference.philox_randn(seed, offsets), rtol=1e-6, atol=1e-6)
    uniforms = torch.empty(n)
    assert probes.ffv_philox_fill(1, seed_tensor.data_ptr(), n, uniforms.data_ptr(), None) == 0
    c0 = reference.philox_randint4x(seed, offsets)[0]
    assert torch.equal(uniforms, reference.uint32_to_uniform(c0))


def test_fma_and_exp_probes_compute_their_loops(probes):
    x = torch.rand(300)
    expected = x.double()
    for _ in range(7):
        expected = expected * 0.999 + 0.001
    assert probes.ffv_roofline_fma(300, 7, x.data_ptr(), None) == 0
    torch.testing.assert_close(x.double(), expected, rtol=1e-6, atol=0)
    y = torch.rand(300)
    expected = y.double()
    for _ in range(3):
        expected = torch.exp(expected * 0.1)
    assert probes.ffv_roofline_exp(300, 3, y.data_ptr(), None) == 0
    torch.testing.assert_close(y.double(), expected, rtol=1e-6, atol=0)


def test_probes_reject_bad_arguments(probes):
    out = torch.empty(4)
    seed = torch.zeros(1, dtype=torch.int64)
    assert probes.ffv_philox_fill(2, seed.data_ptr(), 4, out.data_ptr(), None) != 0
    assert probes.ffv_philox_fill(0, seed.data_ptr(), 0, out.data_ptr(), None) != 0
    assert probes.ffv_philox_fill(0, None, 4, out.data_ptr(), None) != 0
    assert probes.ffv_roofline_fma(4, 0, out.data_ptr(), None) != 0
    assert probes.ffv_roofline_exp(4, 1, None, None) != 0


def test_floors_follow_the_design_formulas():
    rates = roofline.Rates(device="cpu", threads=1, copy_gbps=10.0, add_gbps=20.0, normals_per_s=1e9,
                           uniforms_per_s=2e9, fma_per_s=1e10, exp_per_s=1e9)
    n = 1000 * 64
    # bandwidth: the faster of copy and add (20 GB/s)
    assert roofline.reparameterize_kl_work("forward", 1000, 64).seconds(rates) == pytest.approx(12 * n / 20e9 + n / 1e9)
    assert roofline.reparameterize_kl_work("full", 1000, 64).seconds(rates) == pytest.approx(32 * n / 20e9 + 2 * n / 1e9)
    assert roofline.reparameterize_kl_work("backward", 1000, 64, stored_eps=True).seconds(rates) == pytest.approx(
        24 * n / 20e9)
    assert roofline.permute_dims_work("full", 1000, 64).seconds(rates) == pytest.approx(24 * n / 20e9 + n / 2e9)
    # an exp counts as 12 FMAs
    assert roofline.log_qz_work("backward", 100, 10).seconds(rates) == pytest.approx((10 + 12) * 1e5 / 1e10)
    assert roofline.logit_loss_work("full", 500, 2).seconds(rates) == pytest.approx(
        32 * 500 / 20e9 + 12 * 4 * 500 / 1e10)


def test_a_tiny_run_reaches_the_report(tmp_path):
    out = tmp_path / "roofline.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.roofline", "--sizes", "64x8", "--log-qz-sizes", "16x4", "--rounds", "2",
         "--repeats", "2", "--threads", "1", "--clock", "thread", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())["roofline"]
    cases = {(row["op"], row["variant"], row["direction"]) for row in record["rows"]}
    for op in ("reparameterize_kl", "permute_dims", "tc_loss", "discriminator_loss", "log_qz"):
        for direction in roofline.DIRECTIONS:
            assert (op, "", direction) in cases
    assert ("reparameterize_kl", "eps regenerated", "backward") in cases
    for row in record["rows"]:
        assert row["rounds"] == 2 and 0 < row["floor_s"] and row["min_s"] <= row["median_s"]
    assert record["rates"]["normals_per_s"] > 0 and record["rates"]["call_floor_us"]["ctypes_call"] > 0
    report = subprocess.run([sys.executable, str(ROOT / "bench" / "report.py"), str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    assert "### Roofline (cpu:" in report.stdout
    assert "| permute_dims | backward | 64×8 |" in report.stdout
    assert "| log_qz | full | 16×4 |" in report.stdout
