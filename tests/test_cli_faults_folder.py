"""The fastfvae command when the run folder or the disk is the fault: two runs into one folder
(real processes), a full disk at a checkpoint and at summary.json, an unwritable cache folder,
a batch too small for the objective, and a finished run extended by --resume.

Each case ends in one ``fastfvae train: error:`` line or a clean run, never a traceback, a lost
checkpoint or a degraded record (the sibling tests/test_cli_faults.py covers the other faults).
"""
from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch

from fastfvae import cli
from fastfvae.data import packed
from fastfvae.train import artefacts, load_checkpoint
LOCK_NAME = ".fastfvae.lock"  # fastfvae.train.rundir.LOCK_NAME (spelled out: the tests also run on older code)

TINY = ["--batch-size", "4", "--disc-depth", "1", "--disc-width", "16", "--log-every", "1", "--quiet",
        "--no-metrics", "--no-images", "--threads", "1"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(capsys, *argv) -> tuple[int, str]:
    """cli.main(argv) in this process -> (exit status, stderr)."""
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


def assert_error_line(status: int, err: str, *fragments: str) -> str:
    assert status == 1, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("fastfvae train: error:"), err
    for fragment in fragments:
        assert fragment in last, err
    return last


def spawn(*argv, preexec_fn=None) -> subprocess.Popen:
    """``python -m fastfvae`` in a real process (one thread: the machine is shared)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "fastfvae", *map(str, argv)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def log_rows(out) -> list[dict]:
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def training_steps(out) -> list[int]:
    return [row["step"] for row in log_rows(out) if "event" not in row]


# ---------------------------------------------------------------------------------------------
# Two runs into one folder
# ---------------------------------------------------------------------------------------------
def test_a_second_run_into_a_held_folder_is_refused_and_a_killed_holder_blocks_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    first = spawn("train", "--steps", 100000, "--out", out, *TINY, "--checkpoint-every", 5)
    try:
        wait_for(lambda: (out / "log.jsonl").exists() and (out / "checkpoint.pt").exists(), first,
                 "the first checkpoint")
        # While it runs: a fresh run and a --resume into its folder are refused, naming its pid.
        for extra in (["--steps", 20, "--seed", 2], ["--steps", 100001, "--resume"]):
            status, err = run(capsys, "train", "--out", out, *TINY, *extra)
            assert_error_line(status, err, f"--out {out}: another fastfvae run (pid {first.pid})")
        assert first.poll() is None
        first.send_signal(signal.SIGINT)  # it stops cleanly: checkpoint, exit 130
        _, err = first.communicate(timeout=120)
        assert first.returncode == 128 + signal.SIGINT, err
    finally:
        if first.poll() is None:
            first.kill()
    steps = training_steps(out)
    assert steps == list(range(1, len(steps) + 1))  # one run's rows, none of the refused runs'
    assert load_checkpoint(out)["step"] == steps[-1] and load_checkpoint(out)["config"]["seed"] == 0

    # A SIGKILLed holder leaves its lock file but no lock: --resume continues at once.
    second = spawn("train", "--steps", 100000, "--out", out, "--resume", *TINY, "--checkpoint-every", 5)
    try:
        reached = steps[-1] + 6
        wait_for(lambda: load_checkpoint(out)["step"] >= reached, second, f"a checkpoint at step {reached}")
        second.kill()
        second.wait(timeout=60)
    finally:
        if second.poll() is None:
            second.kill()
    assert (out / LOCK_NAME).exists()  # left by the killed run, unlocked
    step = load_checkpoint(out)["step"]
    status, err = run(capsys, "train", "--steps", step + 2, "--out", out, "--resume", *TINY)
    assert status == 0, err
    assert load_checkpoint(out)["step"] == step + 2
    assert training_steps(out) == list(range(1, step + 3))


def test_the_lock_is_released_when_a_run_ends_in_this_process(tmp_path, capsys):
    out = tmp_path / "run"
    for steps in (2, 3):  # the second, a --resume in the same process, must find the folder free
        status, err = run(capsys, "train", "--steps", steps, "--out", out, *TINY, *(["--resume"] if steps == 3 else []))
        assert status == 0, err
    assert training_steps(out) == [1, 2, 3]
    assert not (out / LOCK_NAME).exists()  # a run that ends removes its lock file


def test_only_the_writing_rank_takes_the_lock(tmp_path, monkeypatch):
    """Under torchrun rank 0 writes and locks; another rank neither creates the folder nor locks
    it (were it to lock, rank 0 would find its own job's folder held)."""
    from fastfvae.train import TrainConfig, Trainer, rundir
    claims = []
    monkeypatch.setattr(rundir, "claim", lambda out, resume: claims.append(out))
    monkeypatch.setenv("RANK", "1")  # WORLD_SIZE stays 1: no process group, the rank's own logic only
    out = tmp_path / "run"
    config = TrainConfig(steps=1, batch_size=4, disc_depth=1, disc_width=16, metrics=False, images=False,
                         progress=False, out=str(out))
    Trainer(config).run()
    assert claims == [] and not out.exists()


def test_folder_lock_refuses_while_held_and_is_free_after_release(tmp_path):
    from fastfvae.train import rundir
    from fastfvae.train.errors import TrainingError
    first = rundir.FolderLock(str(tmp_path))
    assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    with pytest.raises(TrainingError, match=f"another fastfvae run \\(pid {os.getpid()}\\)"):
        rundir.FolderLock(str(tmp_path))
    with pytest.raises(TrainingError, match="another fastfvae run"):
        rundir.check(str(tmp_path), resume=True)  # the probe of Trainer's early check
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    second = rundir.FolderLock(str(tmp_path))
    rundir.check(str(tmp_path), resume=False, probe_lock=False)
    second.release()


# ---------------------------------------------------------------------------------------------
# A full disk
# ---------------------------------------------------------------------------------------------
def _file_size_limit(limit: int):
    """A preexec_fn: files may not grow past ``limit`` bytes (EFBIG, as a full disk's ENOSPC);
    SIGXFSZ ignored so that the write fails instead of the process dying."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return apply


def test_full_disk_at_a_checkpoint_keeps_the_previous_one_and_resume_works(tmp_path, capsys):
    out, reference = tmp_path / "run", tmp_path / "reference"
    status, err = run(capsys, "train", "--steps", 2, "--out", out, *TINY)
    assert status == 0, err
    before = (out / "checkpoint.pt").read_bytes()
    assert len(before) > 64 * 1024  # the limit below stops the checkpoint, not the log
    full = spawn("train", "--steps", 4, "--out", out, "--resume", *TINY, preexec_fn=_file_size_limit(64 * 1024))
    _, err = full.communicate(timeout=300)
    last = assert_error_line(full.returncode, err, "the disk is full", f"cannot write {out}/checkpoint.pt",
                             "File too large", "still holds the previous checkpoint (step 2)", "--resume")
    assert (out / "checkpoint.pt").read_bytes() == before, last
    assert not [name for name in os.listdir(out) if ".tmp-" in name]

    # Space again: --resume continues from step 2 and ends where an uninterrupted run ends.
    status, err = run(capsys, "train", "--steps", 4, "--out", out, "--resume", *TINY)
    assert status == 0, err
    status, err = run(capsys, "train", "--steps", 4, "--out", reference, *TINY)
    assert status == 0, err
    assert json.loads((out / "summary.json").read_text())["final"] == \
        json.loads((reference / "summary.json").read_text())["final"]
    assert training_steps(out) == [1, 2, 3, 4]


def test_a_really_full_tmpfs_at_a_checkpoint(tmp_path, capsys):
    """ENOSPC itself (the test above sees EFBIG): a tmpfs with room for one checkpoint and a half,
    where it can be mounted (root with CAP_SYS_ADMIN)."""
    status, err = run(capsys, "train", "--steps", 2, "--out", tmp_path / "first", *TINY)
    assert status == 0, err
    size = (tmp_path / "first" / "checkpoint.pt").stat().st_size
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size * 3 // 2 + 65536}", "tmpfs", str(small)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        out = small / "run"
        shutil.copytree(tmp_path / "first", out)
        status, err = run(capsys, "train", "--steps", 4, "--out", out, "--resume", *TINY)
        assert_error_line(status, err, "the disk is full", f"cannot write {out}/checkpoint.pt",
                          "No space left on device", "still holds the previous checkpoint (step 2)")
        assert load_checkpoint(out)["step"] == 2
        assert not [name for name in os.listdir(out) if ".tmp-" in name]
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_full_disk_at_summary_json_names_it_and_resume_writes_it(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    write_json = artefacts.write_json

    def write_json_on_a_full_disk(path, value):
        """The real write, with files limited to 16 bytes while it runs (this process only)."""
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16, hard))
        try:
            write_json(path, value)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, previous)

    monkeypatch.setattr(artefacts, "write_json", write_json_on_a_full_disk)
    status, err = run(capsys, "train", "--steps", 3, "--out", out, *TINY)
    assert_error_line(status, err, "the disk is full", f"cannot write {out}/summary.json", "File too large",
                      "training is complete", "step 3", "--resume")
    assert not (out / "summary.json").exists() and load_checkpoint(out)["step"] == 3
    assert not [name for name in os.listdir(out) if ".tmp-" in name]
    monkeypatch.setattr(artefacts, "write_json", write_json)
    status, err = run(capsys, "train", "--steps", 3, "--out", out, "--resume", *TINY)
    assert status == 0, err
    assert json.loads((out / "summary.json").read_text())["step"] == 3


# ---------------------------------------------------------------------------------------------
# An unwritable cache folder
# ---------------------------------------------------------------------------------------------
def test_unwritable_cache_folder_warns_once_and_keeps_the_built_table(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    table = np.random.default_rng(0).integers(0, 256, (5, packed.ROW_BYTES), dtype=np.uint8)
    builds = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = packed.load_or_build("toy", "k" * 64, 5, lambda: builds.append(1) or table, blocker / "fastfvae")
    assert np.array_equal(got, table) and builds == [1]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "could not write the packed image cache" in messages[0] and str(blocker) in messages[0]
    assert "rebuilding" not in messages[0]


def _reduced_dsprites_npz(path) -> str:
    """A complete dSprites grid of 3 x 2 x 2 x 2 x 3 factor classes with binary images."""
    sizes = (3, 2, 2, 2, 3)
    n = math.prod(sizes)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1).reshape(n, len(sizes))
    classes = np.concatenate([np.zeros((n, 1), np.int64), grid], axis=1)
    imgs = np.zeros((n, 64, 64), np.uint8)
    imgs[:, 10:20, 10:20] = (np.arange(n) % 2)[:, None, None]
    np.savez(path, imgs=imgs, latents_classes=classes, latents_values=classes.astype(np.float64))
    return str(path)


def test_training_with_packed_data_and_an_unwritable_cache_folder_trains(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    data = _reduced_dsprites_npz(tmp_path / "small.npz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status, err = run(capsys, "train", "--steps", 2, "--out", tmp_path / "run", *TINY, "--data", data,
                          "--packed-data")
    assert status == 0, err
    messages = [str(w.message) for w in caught if "packed image" in str(w.message)]
    assert len(messages) == 1 and "could not write" in messages[0] and str(blocker) in messages[0], messages


# ---------------------------------------------------------------------------------------------
# Batches too small for the objective: refused with the other options, before anything is written
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("objective", ["factorvae", "betatcvae", "dipvae1", "dipvae2"])
def test_a_batch_of_one_is_refused_before_anything_is_written(tmp_path, capsys, objective):
    out = tmp_path / "run"
    status, err = run(capsys, "train", "--steps", 1, "--out", out, *TINY, "--objective", objective,
                      "--batch-size", 1)
    assert_error_line(status, err, "--batch-size", f"--objective {objective} needs a batch of at least 2",
                      "got 1")
    assert not out.exists()


def test_a_batch_of_one_on_resume_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    status, err = run(capsys, "train", "--steps", 2, "--out", out, *TINY, "--objective", "dipvae1")
    assert status == 0, err
    files = {name: (out / name).read_bytes() for name in os.listdir(out)}
    status, err = run(capsys, "train", "--steps", 3, "--out", out, "--resume", *TINY, "--objective", "dipvae1",
                      "--batch-size", 1)
    assert_error_line(status, err, "--batch-size", "needs a batch of at least 2")
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == files


@pytest.mark.parametrize("objective", ["betavae", "annealedvae"])
def test_objectives_without_a_batch_statistic_train_on_one_image(tmp_path, capsys, objective):
    status, err = run(capsys, "train", "--steps", 1, "--out", tmp_path / "run", *TINY, "--objective", objective,
                      "--batch-size", 1)
    assert status == 0, err


def test_betatcvae_terms_carry_no_batch_information_at_one_image():
    """Why beta-TCVAE needs two images: with one, its MI and TC estimates are constants."""
    from fastfvae import losses
    loss = losses.BetaTCVAELoss(dataset_size=1000, method="mws", backend="reference")
    mu = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    logvar = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    z = mu + torch.randn(1, 4, dtype=torch.float64) * (0.5 * logvar).exp()
    x = torch.rand(1, 1, 64, 64, dtype=torch.float64)
    terms = loss(torch.zeros_like(x, requires_grad=True), x, z, mu, logvar)
    grads = torch.autograd.grad(terms.tc + terms.mi, (mu, logvar), allow_unused=True)
    assert all(g is None or float(g.abs().max()) < 1e-12 for g in grads)


# ---------------------------------------------------------------------------------------------
# Extending a finished run
# ---------------------------------------------------------------------------------------------
def test_extending_a_finished_run_keeps_every_evaluation_and_says_what_rates_and_images_cover(
        tmp_path, capsys, monkeypatch):
    from fastfvae.train import evaluation
    out = tmp_path / "run"
    scores = iter([0.25, 0.75])
    monkeypatch.setattr(evaluation, "evaluate_metrics",
                        lambda *a, **k: {"factor_vae": {"eval_accuracy": next(scores)}})
    quick = [a for a in TINY if a not in ("--no-metrics", "--no-images")]
    assert run(capsys, "train", "--steps", 2, "--out", out, *quick)[0] == 0
    images = json.loads((out / "summary.json").read_text())["images"]
    # As a run of an earlier version left it: no "images" rows in the log, only the summary's entry.
    rows = [row for row in log_rows(out) if row.get("event") != "images"]
    (out / "log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    # Extended without metrics or images: the step-2 evaluation and images are kept, and named.
    status = cli.main(["train", "--steps", "3", "--out", str(out), "--resume", *TINY])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert "metrics" not in summary
    assert summary["metrics_history"] == [{"step": 2, "metrics": {"factor_vae": {"eval_accuracy": 0.25}}}]
    assert summary["images"] == images and summary["images_step"] == 2
    assert summary["session_steps"] == 1 and summary["step"] == 3
    done = [line for line in captured.out.splitlines() if line.startswith("done:")][0]
    assert "this session: 1 steps in" in done and "the whole run: 3 steps in" in done, done
    assert "(images of step 2)" in captured.out

    # Extended with metrics, without images: both evaluations, latest on top; images still step 2.
    status = cli.main(["train", "--steps", "4", "--out", str(out), "--resume", *quick, "--no-images"])
    assert status == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"] == {"factor_vae": {"eval_accuracy": 0.75}}
    assert [entry["step"] for entry in summary["metrics_history"]] == [4, 2]
    assert summary["images_step"] == 2

    # Redrawn: the images show the last step again.
    monkeypatch.setattr(evaluation, "evaluate_metrics", lambda *a, **k: {"factor_vae": {"eval_accuracy": 1.0}})
    assert cli.main(["train", "--steps", "5", "--out", str(out), "--resume", *quick]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images_step"] == 5 and [entry["step"] for entry in summary["metrics_history"]] == [5, 4, 2]
