"""The fastfvae command under faults: bad option values, unusable output folders, corrupt or
partial checkpoints and data files, changed options on --resume, and stop signals in each phase.

Every case ends in one clear ``fastfvae <command>: error:`` line (exit 1, or 2 for argparse's
own type errors) or a clean stop (exit 128 + signal), never a traceback, never a lost checkpoint
and never a degraded record. Runs are tiny (batch 4, a 1x16 discriminator, 2-4 steps) and
in-process; signals are sent by the process to itself at the phase under test.
"""
from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import torch

from fastfvae import cli
from fastfvae.train import evaluation, load_checkpoint

TINY = ["--batch-size", "4", "--disc-depth", "1", "--disc-width", "16", "--log-every", "1", "--quiet",
        "--no-metrics", "--no-images", "--threads", "1"]


def run(capsys, *argv) -> tuple[int, str]:
    """cli.main(argv) -> (exit status, stderr); argparse's exits become their status."""
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


def assert_error_line(status: int, err: str, command: str, fragment: str, expected_status: int = 1) -> None:
    """Exit status 1 (or argparse's 2), no traceback, the last stderr line is the error naming ``fragment``."""
    assert status == expected_status, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"fastfvae {command}: error:"), err
    assert fragment in last, err


def train_run(capsys, out, steps=2, *extra) -> int:
    status, err = run(capsys, "train", "--steps", steps, "--out", out, *TINY, *extra)
    assert status == 0, err
    return status


# ---------------------------------------------------------------------------------------------
# Bad option values: refused before anything is built or written
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, fragment", [
    (["--out", ""], "--out: expected a folder path, got ''"),
    (["--gamma", "nan"], "--gamma: expected a finite number >= 0, got nan"),
    (["--gamma", "-1"], "--gamma: expected a finite number >= 0"),
    (["--lr-vae", "0"], "--lr-vae: expected a finite number > 0"),
    (["--lr-d", "inf"], "--lr-d: expected a finite number > 0"),
    (["--metrics-preset", "bogus"], "--metrics-preset: expected one of ('auto', 'default', 'fast'), got 'bogus'"),
    (["--backend", "cuda"], "--backend: expected one of ('auto', 'native', 'triton', 'reference'), got 'cuda'"),
    (["--seed", str(2 ** 64)], "--seed: expected an integer in [0, 2**63 - 1]"),
    (["--seed", "-1"], "--seed: expected an integer in [0, 2**63 - 1], got -1"),
    (["--disc-width", "1000000000"], "the discriminator needs"),
    (["--device", "tpu"], "--device: expected auto, cpu or cuda, got 'tpu'"),
    (["--amp", "bf16", "--device", "cpu"], "--amp bf16 needs a CUDA device"),
    (["--threads", "0"], "--threads: expected a positive integer or auto, got '0'"),
    (["--data", "/nonexistent/dsprites.npz"], "/nonexistent/dsprites.npz"),
])
def test_bad_values_fail_at_once_and_create_no_folder(tmp_path, capsys, argv, fragment):
    out = tmp_path / "run"
    if argv[:2] == ["--out", ""]:
        status, err = run(capsys, "train", "--steps", "1", *TINY, *argv)
    else:
        status, err = run(capsys, "train", "--steps", "1", "--out", out, *TINY, *argv)
    assert_error_line(status, err, "train", fragment)
    assert not out.exists() and os.listdir(tmp_path) == []


def test_backend_that_cannot_serve_this_device_is_refused_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from fastfvae import backends
    backends.clear_cache()
    if torch.cuda.is_available():
        pytest.skip("the triton backend can serve this machine")
    status, err = run(capsys, "train", "--steps", "1", "--out", tmp_path / "run", *TINY,
                      "--device", "cpu", "--backend", "triton")
    assert_error_line(status, err, "train", "--backend triton cannot run this run's ops on cpu")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_leaves_no_folder(tmp_path, capsys):
    status, err = run(capsys, "train", "--steps", "1", "--out", tmp_path / "run", *TINY, "--device", "cuda")
    assert_error_line(status, err, "train", "no CUDA device is available")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["--steps", "0"], "argument --steps: expected a positive integer, got 0"),
    (["--steps", "abc"], "argument --steps: invalid _positive_int value"),
    (["--batch-size", "-3"], "argument --batch-size"),
    (["--z-dim", "0"], "argument --z-dim"),
    (["--eval-every", "-1"], "argument --eval-every"),
    (["--log-tc-every", "x"], "argument --log-tc-every"),
    (["--objective", "vae"], "argument --objective: invalid choice"),
    (["--amp", "fp16"], "argument --amp: invalid choice"),
    (["--gamma", "many"], "argument --gamma: invalid float value"),
    (["--seed", "1.5"], "argument --seed: invalid int value"),
    (["--disc-depth", "0"], "argument --disc-depth: expected a positive integer, got 0"),
    (["--checkpoint-every", "0"], "argument --checkpoint-every"),
    (["--log-every", "-1"], "argument --log-every"),
])
def test_type_errors_are_argparse_usage_lines(tmp_path, capsys, argv, fragment):
    status, err = run(capsys, "train", "--out", tmp_path / "run", *argv)
    assert_error_line(status, err, "train", fragment, expected_status=2)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Unusable output folders
# ---------------------------------------------------------------------------------------------
def test_out_naming_a_file_is_refused_and_the_file_kept(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    status, err = run(capsys, "train", "--steps", "1", "--out", target, *TINY)
    assert_error_line(status, err, "train", "is a file, expected a folder")
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("out", ["/proc/fastfvae-run", "/proc"])
def test_out_where_nothing_can_be_written_fails_before_training(capsys, out):
    """/proc refuses new files even to root (a chmod'ed folder would not stop root)."""
    status, err = run(capsys, "train", "--steps", "1", "--out", out, *TINY)
    assert_error_line(status, err, "train", f"--out {out}:")
    assert not os.path.exists("/proc/fastfvae-run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_fails_before_training(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        status, err = run(capsys, "train", "--steps", "1", "--out", folder, *TINY)
    finally:
        folder.chmod(0o700)
    assert_error_line(status, err, "train", "cannot write there")


def test_fresh_run_into_a_folder_with_an_old_log_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text('{"step": 10, "loss": 1.0}\n')
    status, err = run(capsys, "train", "--steps", "1", "--out", out, *TINY)
    assert_error_line(status, err, "train", "holds log.jsonl of an earlier run but no checkpoint")
    assert (out / "log.jsonl").read_text() == '{"step": 10, "loss": 1.0}\n'
    assert sorted(os.listdir(out)) == ["log.jsonl"]


def test_resume_of_a_missing_folder_is_an_error_and_creates_nothing(tmp_path, capsys):
    status, err = run(capsys, "train", "--steps", "2", "--out", tmp_path / "gone", "--resume", *TINY)
    assert_error_line(status, err, "train", "the folder")
    assert "does not exist" in err and not (tmp_path / "gone").exists()


def test_stale_temp_files_of_every_kind_are_removed_on_start(tmp_path, capsys):
    out = tmp_path / "run"
    train_run(capsys, out, 2)
    for name in ("summary.json.tmp", "metrics.json.tmp", "checkpoint.pt.tmp-999", "summary.json.tmp-999"):
        (out / name).write_text("half a file")
    train_run(capsys, out, 3, "--resume")
    assert not [name for name in os.listdir(out) if ".tmp" in name]


# ---------------------------------------------------------------------------------------------
# Corrupt and partial checkpoints and data files
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 2-step run (its files are copied by the tests that damage them)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main(["train", "--steps", "2", "--out", str(out), *TINY]) == 0
    return out


def damaged_copy(finished_run, tmp_path, damage) -> str:
    out = tmp_path / "run"
    out.mkdir()
    for name in os.listdir(finished_run):
        (out / name).write_bytes((finished_run / name).read_bytes())
    damage(out / "checkpoint.pt")
    return str(out)


def _garbage(path):
    path.write_bytes(b"garbage, not a checkpoint")


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _without(key):
    def damage(path):
        state = torch.load(path, weights_only=True)
        del state[key]
        torch.save(state, path)
    return damage


def _wrong_weights(path):
    state = torch.load(path, weights_only=True)
    state["config"]["z_dim"] = 3  # the weights are for z_dim 10
    torch.save(state, path)


@pytest.mark.parametrize("damage, fragment", [
    (_garbage, "is corrupt or not a fastfvae checkpoint"),
    (_truncated, "is corrupt or not a fastfvae checkpoint"),
    (_without("config"), "is incomplete: it lacks config"),
    (_without("vae"), "is incomplete: it lacks vae"),
    (_without("rng"), "is incomplete: it lacks rng"),
])
@pytest.mark.parametrize("command", ["train", "evaluate", "traverse"])
def test_damaged_checkpoints_give_one_error_line(finished_run, tmp_path, capsys, damage, fragment, command):
    out = damaged_copy(finished_run, tmp_path, damage)
    argv = {"train": ["train", "--steps", "3", "--out", out, "--resume", *TINY],
            "evaluate": ["evaluate", out, "--no-decomposition"],
            "traverse": ["traverse", out, "--out", tmp_path / "t.png"]}[command]
    before = {name: (tmp_path / "run" / name).read_bytes() for name in os.listdir(out)}
    status, err = run(capsys, *argv)
    assert_error_line(status, err, command, fragment)
    assert {name: (tmp_path / "run" / name).read_bytes() for name in os.listdir(out)} == before


@pytest.mark.parametrize("command", ["evaluate", "traverse"])
def test_checkpoint_whose_weights_do_not_fit_its_config(finished_run, tmp_path, capsys, command):
    out = damaged_copy(finished_run, tmp_path, _wrong_weights)
    argv = ["evaluate", out, "--no-decomposition"] if command == "evaluate" else ["traverse", out]
    status, err = run(capsys, *argv)
    assert_error_line(status, err, command, "weights do not fit")


def test_corrupt_and_truncated_data_files(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not a zip archive")
    status, err = run(capsys, "train", "--steps", "1", "--out", tmp_path / "run", *TINY, "--data", bad)
    assert_error_line(status, err, "train", "bad.npz' is not a readable dSprites npz")
    imgs = np.zeros((72, 64, 64), np.uint8)
    classes = np.concatenate([np.zeros((72, 1), np.int64), np.stack(np.meshgrid(
        *[np.arange(s) for s in (3, 2, 2, 2, 3)], indexing="ij"), -1).reshape(72, 5)], axis=1)
    np.savez(tmp_path / "x255.npz", imgs=imgs + 255, latents_classes=classes)
    status, err = run(capsys, "train", "--steps", "1", "--out", tmp_path / "run", *TINY, "--data", tmp_path / "x255.npz")
    assert_error_line(status, err, "train", "must hold 0/1 pixels")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# --resume: changed options are applied and recorded, or refused; finished runs stay as they are
# ---------------------------------------------------------------------------------------------
def test_changed_learning_rates_and_gamma_are_applied_logged_and_recorded(tmp_path, capsys):
    out = tmp_path / "run"
    train_run(capsys, out, 2)
    status, err = run(capsys, "train", "--steps", "3", "--out", out, "--resume", *TINY,
                      "--lr-vae", "0.001", "--lr-d", "0.0005", "--gamma", "10")
    assert status == 0, err
    assert "options changed on resume (applied)" in err and "lr_vae 0.0001 -> 0.001" in err
    state = load_checkpoint(str(out))
    assert state["opt_vae"]["param_groups"][0]["lr"] == 0.001  # the optimiser's rate, not only the record
    assert state["opt_d"]["param_groups"][0]["lr"] == 0.0005
    assert state["config"]["lr_vae"] == 0.001 and state["config"]["gamma"] == 10.0
    rows = [json.loads(line) for line in open(out / "log.jsonl")]
    resume_rows = [r for r in rows if r.get("event") == "resume"]
    assert resume_rows == [{"step": 2, "event": "resume", "changed": {
        "steps": [2, 3], "gamma": [35.0, 10.0], "lr_vae": [0.0001, 0.001], "lr_d": [0.0001, 0.0005]}}]
    summary = json.load(open(out / "summary.json"))
    assert summary["changed_on_resume"]["gamma"] == [35.0, 10.0] and summary["config"]["gamma"] == 10.0


@pytest.mark.parametrize("option, value", [("--seed", "1"), ("--z-dim", "3"), ("--disc-width", "8"),
                                           ("--objective", "betavae")])
def test_options_that_define_the_model_cannot_change_on_resume(tmp_path, capsys, option, value):
    out = tmp_path / "run"
    train_run(capsys, out, 2)
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    status, err = run(capsys, "train", "--steps", "3", "--out", out, "--resume", *TINY, option, value)
    assert_error_line(status, err, "train", f"{option} cannot change on --resume")
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_resuming_a_finished_run_never_degrades_its_records(tmp_path, capsys):
    out = tmp_path / "run"
    train_run(capsys, out, 3)
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    assert json.loads(before["summary.json"])["final"]
    status, err = run(capsys, "train", "--steps", "3", "--out", out, "--resume", *TINY)
    assert status == 0, err
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    status, err = run(capsys, "train", "--steps", "2", "--out", out, "--resume", *TINY)
    assert_error_line(status, err, "train", "--steps 2:")
    assert "is at step 3" in err
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


# ---------------------------------------------------------------------------------------------
# Stop signals in each phase
# ---------------------------------------------------------------------------------------------
def _signal_self(times: int = 1) -> None:
    for _ in range(times):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # let the handler run


def test_signal_during_steps_checkpoints_and_stops(tmp_path, capsys, monkeypatch):
    from fastfvae.train.whole_step import WholeStep
    original = WholeStep.eager

    def step_then_signal(self):
        values = original(self)
        if self.calls == 2:  # during step 2
            _signal_self()
        return values

    monkeypatch.setattr(WholeStep, "eager", step_then_signal)
    status, err = run(capsys, "train", "--steps", "50", "--out", tmp_path / "run", *TINY)
    assert status == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "interrupted (SIGTERM) at step 2" in err
    assert "holds that step (no summary.json yet)" in err and "summary.json holds" not in err
    assert load_checkpoint(str(tmp_path / "run"))["step"] == 2
    assert not (tmp_path / "run" / "summary.json").exists()  # no summary claims a finished run


def test_signal_during_a_checkpoint_write_keeps_that_checkpoint(tmp_path, capsys, monkeypatch):
    from fastfvae.train import checkpoint
    real_save = torch.save
    calls = []

    def save_with_signal(obj, f):
        calls.append(obj["step"])
        if len(calls) == 1:
            _signal_self()  # one signal: the write completes, training stops after it
        return real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", save_with_signal)
    status, err = run(capsys, "train", "--steps", "50", "--out", tmp_path / "run", *TINY, "--checkpoint-every", "2")
    assert status == 128 + signal.SIGTERM, err
    assert calls == [2, 2] and load_checkpoint(str(tmp_path / "run"))["step"] == 2


def test_second_signal_during_a_checkpoint_write_loses_no_checkpoint(tmp_path, capsys, monkeypatch):
    from fastfvae.train import checkpoint
    real_save = torch.save
    calls = []

    def save_interrupted(obj, f):
        calls.append(obj["step"])
        if len(calls) == 2:  # the step-4 write: half written, then two signals
            f.write(b"PK\x03\x04half")
            _signal_self(times=2)
        return real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", save_interrupted)
    out = tmp_path / "run"
    status, err = run(capsys, "train", "--steps", "50", "--out", out, *TINY, "--checkpoint-every", "2")
    assert status == 130, err
    assert "Traceback" not in err and "stopped by a second signal" in err.strip().splitlines()[-1]
    assert load_checkpoint(str(out))["step"] == 2
    assert not [name for name in os.listdir(out) if ".tmp" in name]


def test_signal_during_end_of_run_metrics_stops_and_writes_the_summary(tmp_path, capsys, monkeypatch):
    def slow_metrics(vae, dataset, device, seed=0, preset="auto"):
        _signal_self()
        time.sleep(30)  # the signal must end this phase at once
        return {"factor_vae": {"eval_accuracy": 0.0}}

    monkeypatch.setattr(evaluation, "evaluate_metrics", slow_metrics)
    out = tmp_path / "run"
    argv = ["train", "--steps", "2", "--out", out, *[a for a in TINY if a != "--no-metrics"]]
    t0 = time.perf_counter()
    status, err = run(capsys, *argv)
    assert time.perf_counter() - t0 < 25 and status == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "during the end-of-run evaluation" in err
    summary = json.load(open(out / "summary.json"))
    assert summary["interrupted"] == "SIGTERM" and summary["step"] == 2 and summary["final"]
    assert "metrics" not in summary and len(summary["kl_per_dim"]) == 10
    assert load_checkpoint(str(out))["step"] == 2

    # --resume finishes the evaluation; the checkpoint and the training log stay as they were.
    monkeypatch.setattr(evaluation, "evaluate_metrics", lambda *a, **k: {"factor_vae": {"eval_accuracy": 0.5}})
    log_before = (out / "log.jsonl").read_text()
    status, err = run(capsys, *argv, "--resume")
    assert status == 0, err
    summary = json.load(open(out / "summary.json"))
    assert "interrupted" not in summary and summary["metrics"] == {"factor_vae": {"eval_accuracy": 0.5}}
    assert (out / "log.jsonl").read_text().startswith(log_before)


def test_ctrl_c_during_evaluate_is_one_line_and_writes_nothing(finished_run, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "evaluate_metrics", interrupted)
    status, err = run(capsys, "evaluate", finished_run, "--out", tmp_path / "m.json", "--no-decomposition")
    assert status == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "fastfvae evaluate: interrupted; nothing was written"
    assert not (tmp_path / "m.json").exists()


def test_signal_during_metrics_in_training_stops_at_once_with_a_checkpoint(tmp_path, capsys, monkeypatch):
    def slow_metrics(vae, dataset, device, seed=0, preset="auto"):
        _signal_self()
        time.sleep(30)
        return {}

    monkeypatch.setattr(evaluation, "evaluate_metrics", slow_metrics)
    out = tmp_path / "run"
    t0 = time.perf_counter()
    status, err = run(capsys, "train", "--steps", "50", "--out", out, *TINY, "--eval-every", "2")
    assert time.perf_counter() - t0 < 25 and status == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "interrupted (SIGTERM) at step 2" in err
    assert load_checkpoint(str(out))["step"] == 2
    assert not [line for line in open(out / "log.jsonl") if '"event": "eval"' in line]


@pytest.mark.parametrize("argv, fragment, expected_status", [
    (["--index", "737280"], "index 737280 out of range", 1),
    (["--index", "-737281"], "index -737281 out of range", 1),
    (["--values", "0"], "argument --values: expected a positive integer", 2),
    (["--limit", "nan"], "argument --limit: expected a finite number > 0, got nan", 2),
    (["--limit", "0"], "argument --limit: expected a finite number > 0", 2),
])
def test_traverse_bad_values(finished_run, tmp_path, capsys, argv, fragment, expected_status):
    status, err = run(capsys, "traverse", finished_run, "--out", tmp_path / "t.png", *argv)
    assert_error_line(status, err, "traverse", fragment, expected_status)
    assert not (tmp_path / "t.png").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["--num-mixture", "0"], "argument --num-mixture"),
    (["--num-samples", "-5"], "argument --num-samples"),
    (["--metrics-preset", "bogus"], "preset"),
])
def test_evaluate_bad_values(finished_run, tmp_path, capsys, argv, fragment):
    status, err = run(capsys, "evaluate", finished_run, "--out", tmp_path / "m.json", "--no-decomposition", *argv)
    assert status in (1, 2) and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("fastfvae evaluate: error:") and fragment in last, err
    assert not (tmp_path / "m.json").exists()
