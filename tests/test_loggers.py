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


def _wandb_records(path: str) -> dict:
    """An offline W&B run file (LevelDB-style log of protobuf records, read with wandb's own
    protobuf classes): its group, config keys and history rows ({key: value})."""
    import struct

    from wandb.proto import wandb_internal_pb2
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B"
    block, pos, pending, out = 32768, 7, b"", {"history": [], "config": set(), "group": None}
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk  # full, first | middle, last
        if kind not in (1, 4):
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        which = record.WhichOneof("record_type")
        if which == "run":
            out["group"] = record.run.run_group
            out["config"] |= {item.key for item in record.run.config.update}
        elif which == "history":
            out["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                   for item in record.history.item})
    return out


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

    runs = glob.glob(os.path.join(out, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(runs) == 1, os.listdir(os.path.join(out, "wandb"))
    run = _wandb_records(runs[0])
    assert run["group"] == "group-a" and {"gamma", "disc_width", "loggers"} <= run["config"]
    history = run["history"]
    assert [h["_step"] for h in history] == [5, 10, 15, 20]  # W&B joins a step's logs into one row
    assert {"train/loss", "train/recon", "train/kl", "train/d_acc"} <= set(history[0])
    assert "tc/tc_minibatch" in history[1] and "images/reconstructions/path" in history[-1]
    assert history[3]["train/recon"] == pytest.approx(train_rows[-1]["recon"], rel=1e-6)
    assert glob.glob(os.path.join(os.path.dirname(runs[0]), "files", "media", "images", "images", "traversals_20_*.png"))

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
