"""fastfvae train --logger tensorboard / wandb: what the viewers receive, read back with their
own readers (TensorBoard's EventAccumulator; W&B's offline run folder)."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from fastfvae.train import TrainConfig, TrainingError, loggers

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed: pip install 'fastfvae[tensorboard]'")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TINY = ["--batch-size", "16", "--disc-depth", "2", "--disc-width", "32", "--z-dim", "4", "--no-metrics",
        "--log-every", "5", "--log-tc-every", "10", "--checkpoint-every", "10", "--backend", "reference", "--quiet"]


def _train(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_RUN_GROUP": "group-a"}
    env.pop("WANDB_MODE", None)
    return subprocess.run([sys.executable, "-m", "fastfvae", "train", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def _events(folder: str) -> EventAccumulator:
    acc = EventAccumulator(folder, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.mark.slow
def test_tensorboard_and_wandb_receive_the_run(tmp_path):
    """One tiny run with both loggers; then a resumed run continues the same TensorBoard series
    without duplicates."""
    pytest.importorskip("wandb", reason="the wandb extra is not installed: pip install 'fastfvae[wandb]'")
    out = str(tmp_path / "run")
    result = _train("--steps", "20", "--out", out, "--logger", "tensorboard", "--logger", "wandb", *TINY)
    assert result.returncode == 0, result.stderr
    with open(os.path.join(out, "log.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    train_rows = [r for r in rows if "event" not in r]

    acc = _events(os.path.join(out, "tensorboard"))
    tags = acc.Tags()
    for term in ("loss", "recon", "kl", "tc", "d_loss", "d_acc", "steps_per_s"):
        assert f"train/{term}" in tags["scalars"], tags["scalars"]
        events = acc.Scalars(f"train/{term}")
        assert [e.step for e in events] == [r["step"] for r in train_rows]
        assert [e.value for e in events] == pytest.approx([r[term] for r in train_rows], rel=1e-6)
    assert [e.step for e in acc.Scalars("tc/tc_minibatch")] == [10, 20]
    assert {"images/reconstructions", "images/traversals"} <= set(tags["images"])
    image = acc.Images("images/reconstructions")[0]
    assert image.step == 20 and image.width == 8 * 66 + 2 and image.height == 2 * 66 + 2
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")

    runs = glob.glob(os.path.join(out, "wandb", "offline-run-*"))
    assert len(runs) == 1, os.listdir(os.path.join(out, "wandb"))
    with open(os.path.join(runs[0], "files", "wandb-summary.json")) as f:
        summary = json.load(f)
    assert {"train/loss", "train/recon", "train/kl", "train/d_acc", "tc/tc_minibatch",
            "images/reconstructions", "images/traversals"} <= set(summary), sorted(summary)
    assert summary["train/recon"] == pytest.approx(train_rows[-1]["recon"], rel=1e-6)
    with open(os.path.join(runs[0], "files", "config.yaml")) as f:
        config = f.read()
    assert "gamma:" in config and "disc_width:" in config

    # resume to 30 steps: TensorBoard's series continue after step 20, none repeated
    result = _train("--steps", "30", "--out", out, "--resume", "--logger", "tensorboard", *TINY)
    assert result.returncode == 0, result.stderr
    steps = [e.step for e in _events(os.path.join(out, "tensorboard")).Scalars("train/loss")]
    assert steps == [5, 10, 15, 20, 25, 30]


def test_eval_rows_become_metric_scalars(tmp_path):
    """An "eval" row of log.jsonl (the battery's result) becomes metrics/<metric>.<score> scalars."""
    config = TrainConfig(out=str(tmp_path))
    sink = loggers.Loggers.open(["tensorboard"], str(tmp_path), config, start_step=0)
    sink.row({"step": 5, "loss": 2.5, "recon": 2.0, "steps_per_s": 3.0, "time_s": 1.0})
    sink.row({"step": 5, "event": "eval", "metrics": {"factor_vae": {"eval_accuracy": 0.625, "train_accuracy": 0.7},
                                                      "mig": {"score": 0.125, "per_factor": [0.1]}}})
    sink.row({"step": 5, "event": "resume", "changed": {"lr_vae": [1, 2]}})
    sink.close(finished=True)
    acc = _events(os.path.join(str(tmp_path), "tensorboard"))
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/recon", "train/steps_per_s", "metrics/factor_vae.eval_accuracy", "metrics/mig.score"} <= scalars
    assert "train/time_s" not in scalars and "metrics/factor_vae.train_accuracy" not in scalars
    assert acc.Scalars("metrics/factor_vae.eval_accuracy")[0].value == 0.625


def test_unknown_or_missing_logger_is_refused_before_any_work(tmp_path, monkeypatch):
    with pytest.raises(TrainingError, match="--logger: expected one of"):
        loggers.check_names(["mlflow"])
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the package were not installed
    with pytest.raises(TrainingError, match=r"--logger wandb: the wandb package is not installed; pip install 'fastfvae\[wandb\]'"):
        loggers.check_names(["wandb"])
    from fastfvae.train.config import validate
    with pytest.raises(TrainingError, match="wandb package is not installed"):
        validate(TrainConfig(out=str(tmp_path / "x"), loggers=["wandb"]))
    assert not os.path.exists(tmp_path / "x")
