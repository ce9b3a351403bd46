"""The fastfvae command: train / resume / evaluate / traverse, bad options, SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from fastfvae import cli
from fastfvae.train import write_png

TINY = ["--batch-size", "4", "--disc-depth", "1", "--disc-width", "16", "--log-every", "1", "--quiet"]


def decode_png(path) -> np.ndarray:
    """The pixels of a PNG as uint8 (H, W) grey or (H, W, 3) RGB, read with Pillow."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image)


def test_png_round_trip(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7), dtype=np.uint8)
    rgb = np.random.default_rng(1).integers(0, 256, (4, 3, 3), dtype=np.uint8)
    for p in (pixels, rgb):
        path = str(tmp_path / "p.png")
        write_png(path, p)
        assert np.array_equal(decode_png(path), p)
    assert os.listdir(tmp_path) == ["p.png"]  # the temp file was renamed


def rows(out) -> list[dict]:
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_train_resume_traverse_and_evaluate(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")
    assert cli.main(["train", "--steps", "2", "--out", out, "--no-metrics", *TINY]) == 0
    printed = capsys.readouterr().out
    assert f"outputs in {out}/" in printed and "reconstructions.png" in printed
    for name in ("checkpoint.pt", "log.jsonl", "summary.json", "reconstructions.png", "traversals.png",
                 "traversals.gif", "curves.png"):
        assert os.path.exists(os.path.join(out, name)), name
        assert name in printed, name
    recon = decode_png(os.path.join(out, "reconstructions.png"))
    assert recon.shape == (2 * 66 + 2, 8 * 66 + 2)
    assert decode_png(os.path.join(out, "traversals.png")).shape == (10 * 66 + 2, 9 * 66 + 2)

    assert cli.main(["train", "--steps", "3", "--out", out, "--resume", "--no-metrics", *TINY]) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["step"] == 3 and summary["config"]["resume"] is True
    assert [r["step"] for r in rows(out) if "event" not in r] == [1, 2, 3]

    png = str(tmp_path / "t.png")
    assert cli.main(["traverse", out, "--out", png, "--index", "5", "--values", "5"]) == 0
    assert decode_png(png).shape == (10 * 66 + 2, 5 * 66 + 2)
    gif = str(tmp_path / "t.gif")
    assert cli.main(["traverse", out, "--out", gif, "--index", "5", "--values", "5"]) == 0
    with Image.open(gif) as animation:  # one column (the image), one row per latent, 8 frames
        assert animation.format == "GIF" and animation.n_frames == 8 and animation.size == (66 + 2, 10 * 66 + 2)

    # evaluate: the plumbing (the metrics' own cost and correctness are tests/test_metrics.py's).
    import fastfvae.train as train_mod
    from fastfvae.train import evaluation
    seen = {}

    def fake_metrics(vae, dataset, device, seed=0, preset="auto", names="all"):
        seen["z"] = train_mod.encoder_mean_fn(vae, device)(dataset.images(dataset.factors_of_index(
            __import__("torch").arange(3)))).shape
        seen["names"] = names
        return {"factor_vae": {"eval_accuracy": 0.5}, "beta_vae": {"eval_accuracy": 0.6}, "mig": {"mig": 0.1}}

    monkeypatch.setattr(evaluation, "evaluate_metrics", fake_metrics)
    metrics_json = str(tmp_path / "m.json")
    assert cli.main(["evaluate", os.path.join(out, "checkpoint.pt"), "--out", metrics_json,
                     "--no-decomposition"]) == 0
    result = json.load(open(metrics_json))
    assert result["step"] == 3 and result["metrics"]["factor_vae"]["eval_accuracy"] == 0.5
    assert tuple(seen["z"]) == (3, 10) and seen["names"] == "all"
    assert cli.main(["evaluate", out, "--out", metrics_json, "--no-decomposition", "--metrics", "mig, dci"]) == 0
    assert seen["names"] == ["mig", "dci"]
    with pytest.raises(SystemExit):   # argparse refuses an unknown metric before loading anything
        cli.main(["evaluate", out, "--metrics", "mig,irs"])


@pytest.mark.parametrize("argv, message", [
    (["train", "--amp", "bf16", "--device", "cpu", "--steps", "1"], "bf16 needs a CUDA device"),
    (["train", "--resume", "--steps", "1"], "--resume needs --out"),
    (["train", "--data", "/nonexistent/dsprites.npz", "--steps", "1"], "/nonexistent/dsprites.npz"),
    (["evaluate", "/nonexistent/checkpoint.pt"], "does not exist"),
    (["train", "--threads", "zero", "--steps", "1"], "--threads: expected a positive integer or auto"),
])
def test_bad_options_give_clear_errors(tmp_path, capsys, argv, message):
    if "--resume" not in argv and argv[0] == "train":
        argv = argv + ["--out", str(tmp_path / "x")]
    assert cli.main(argv) == 1
    assert message in capsys.readouterr().err


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fastfvae", "train", "--steps", "100000", "--out", str(out),
           "--no-metrics", "--no-images", *TINY]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # wait until training has taken a few steps
            if (out / "log.jsonl").exists() and len((out / "log.jsonl").read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr and "interrupted (SIGTERM)" in stderr and "--resume" in stderr
    from fastfvae.train import load_checkpoint
    state = load_checkpoint(str(out))
    logged = [r["step"] for r in rows(out) if "event" not in r]
    assert state["step"] == logged[-1] >= 3


def test_commands_retain_freed_memory(monkeypatch):
    # fastfvae/memory.py: the commands stop glibc's page-fault churn before doing any work.
    import fastfvae.cli as cli

    calls = []
    monkeypatch.setattr(cli, "retain_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(cli, "_cmd_traverse", lambda args: 0)
    assert cli.main(["traverse", "no-such-checkpoint", "--out", "x.png"]) == 0
    assert calls == [1]


def test_retain_freed_memory_sets_glibc_options():
    import sys

    from fastfvae.memory import retain_freed_memory

    result = retain_freed_memory()
    assert result is (sys.platform.startswith("linux") and _has_glibc())


def _has_glibc() -> bool:
    import platform

    return platform.libc_ver()[0] == "glibc"
