"""Studies: fastfvae sweep (grid, manifest, the local and SLURM executors through submitit, a
killed sweep continued, a requeued SLURM job resumed) and fastfvae aggregate (table, figures).

The sweeps run real tiny train runs (small discriminator, batch 16, a few dozen steps, no
metrics) in real processes; the SLURM test runs on the one-node cluster that
scripts/slurm_local.sh starts (CI starts it) and skips where there is none.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from fastfvae import aggregate, study
from fastfvae.study import StudyError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--batch-size", "16", "--disc-depth", "2", "--disc-width", "32", "--z-dim", "4", "--no-metrics",
        "--log-every", "5", "--checkpoint-every", "10", "--backend", "reference", "--quiet"]


def _fastfvae(*args, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fastfvae", *args], capture_output=True, text=True, env=env,
                          timeout=kwargs.pop("timeout", 300), **kwargs)


def _tree_digest(folder: str) -> dict:
    """{relative path: (sha256, mtime_ns)} of every file under ``folder``."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = (hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime_ns)
    return out


# ---------------------------------------------------------------------------------------------
def test_grid_parsing_and_points():
    grid = study.parse_grid(["gamma=10,20", "--seed=0:3", "disc_width=8:20:8"])
    assert grid == {"gamma": ["10", "20"], "seed": ["0", "1", "2"], "disc-width": ["8", "16"]}
    points = study.grid_points(grid)
    assert len(points) == 12 and points[0] == {"gamma": "10", "seed": "0", "disc-width": "8"}
    assert points[1] == {"gamma": "10", "seed": "0", "disc-width": "16"}  # the last key varies fastest
    assert study.point_name({"gamma": "1e-3", "data": "a/b.npz"}) == "gamma=1e-3_data=a~b.npz"
    kinds = study.train_option_kinds()
    assert kinds["gamma"] == "value" and kinds["no-metrics"] == "store_true" and kinds["packed-data"] == "bool"
    assert study.point_train_args(["--steps", "5"], {"gamma": "3", "no-metrics": "true", "packed-data": "no"},
                                  kinds) == ["--steps", "5", "--gamma", "3", "--no-metrics", "--no-packed-data"]
    for bad, needle in ((["gamma"], "KEY=V1"), (["gamma=1,,2"], "one value"), (["seed=0:x"], "integers"),
                        (["seed=0:4:0"], "STEP"), (["gamma=1,1"], "repeated"), (["gamma=1", "gamma=2"], "twice")):
        with pytest.raises(StudyError, match=needle):
            study.parse_grid(bad)


def test_create_refuses_bad_grids_and_other_studies(tmp_path):
    out = str(tmp_path / "s")
    with pytest.raises(StudyError, match="not an option of fastfvae train"):
        study.Study.create(out, {"gama": ["1"]}, [])
    with pytest.raises(StudyError, match="sweep sets it"):
        study.Study.create(out, {"gamma": ["1"]}, ["--out", "x"])
    with pytest.raises(StudyError, match="invalid float"):
        study.Study.create(out, {"gamma": ["ten"]}, [])
    with pytest.raises(StudyError, match="--steps"):
        study.Study.create(out, {"gamma": ["1"]}, ["--steps", "0"])
    assert not os.path.exists(out)  # nothing written for a refused study
    s = study.Study.create(out, {"gamma": ["1", "2"]}, ["--steps", "5"])
    manifest = json.load(open(os.path.join(out, "study.json")))
    assert [p["folder"] for p in manifest["points"]] == ["gamma=1", "gamma=2"]
    assert [p["state"] for p in manifest["points"]] == ["pending", "pending"]
    assert manifest["points"][1]["args"] == ["--steps", "5", "--gamma", "2"]
    assert study.Study.create(out, {"gamma": ["1", "2"]}, ["--steps", "5"]).manifest == s.manifest
    with pytest.raises(StudyError, match="another grid"):
        study.Study.create(out, {"gamma": ["1", "3"]}, ["--steps", "5"])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(StudyError, match="not empty"):
        study.Study.create(str(tmp_path / "full"), {"gamma": ["1"]}, [])


@pytest.mark.slow
def test_local_sweep_killed_midway_continues_and_aggregates(tmp_path):
    """2 x 2 tiny runs through submitit's local executor; the whole sweep (its jobs included) is
    killed with SIGKILL once a point is done and another is between checkpoints; the same command
    then runs only the unfinished points (one resumes from its checkpoint) and never touches the
    finished folders; aggregate writes the table and every figure."""
    out = str(tmp_path / "study")
    command = [sys.executable, "-m", "fastfvae", "sweep", "--grid", "gamma=10,40", "--grid", "seed=0:2",
               "--out", out, "--executor", "local", "--max-parallel", "2", "--steps", "40", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env, start_new_session=True)
    caught = None
    deadline = time.time() + 240
    try:
        while time.time() < deadline and first.poll() is None:
            if os.path.exists(os.path.join(out, "study.json")):
                s = study.Study.load(out)
                states = {p.name: s.state(p)["state"] for p in s.points}
                midway = [p.name for p in s.points if states[p.name] != "done"
                          and os.path.exists(os.path.join(p.folder(out), "checkpoint.pt"))]
                if "done" in states.values() and midway:
                    caught = midway[0]
                    os.killpg(first.pid, signal.SIGKILL)
                    break
            time.sleep(0.05)
    finally:
        if first.poll() is None and caught is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert caught, "the sweep finished before a point was caught between checkpoints:\n" + first.stdout.read()
    s = study.Study.load(out)
    done_before = [p for p in s.points if s.state(p)["state"] == "done"]
    digests = {p.name: _tree_digest(p.folder(out)) for p in done_before}
    assert study.status(out)["done"] == len(done_before) < 4

    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{len(done_before)} done or running, left as they are" in second.stdout
    for p in done_before:
        assert f"started {p.name} " not in second.stdout
        assert _tree_digest(p.folder(out)) == digests[p.name], f"{p.name} was touched"
    report = study.status(out)
    assert report["done"] == 4 and report["steps_done"] == report["steps_total"] == 160
    attempts = s.record(caught)["attempts"]
    # killed between checkpoints, or after the last one during the end-of-run images
    assert attempts[-1]["resume_from_step"] in (10, 20, 30, 40), attempts
    with open(os.path.join(out, caught, "log.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f if '"event"' not in line]
    assert steps == list(range(5, 45, 5))  # the log was cut back to the checkpoint and continued

    status = _fastfvae("sweep", "--status", out)
    assert status.returncode == 0 and "4 done, 0 running, 0 failed, 0 pending; steps 160/160" in status.stdout

    result = _fastfvae("aggregate", out)
    assert result.returncode == 0, result.stderr
    with open(os.path.join(out, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["grid.gamma"], r["grid.seed"]) for r in rows) == [("10", "0"), ("10", "1"), ("40", "0"), ("40", "1")]
    for row in rows:
        assert row["state"] == "done" and row["step"] == "40" and row["device"] == "cpu"
        assert float(row["final.recon"]) > 0 and float(row["wall_time_s"]) > 0 and row["config.gamma"] in ("10.0", "40.0")
        assert row["commit"]  # the source the point ran (a git checkout here)
    table = json.load(open(os.path.join(out, "results.json")))
    assert len(table) == 4 and {"final.kl", "final.tc", "final.d_acc"} <= set(table[0])
    for name in ("metrics_vs_gamma.png", "tradeoff.png", "curves.png"):
        with Image.open(os.path.join(out, name)) as image:
            assert image.size[0] > 300 and image.size[1] > 200, name


def test_aggregate_draws_the_battery_scores(tmp_path):
    """The figures and table with the metric battery's scores: run folders holding summaries in
    the trainer's format (the scores written here stand for a battery that ran)."""
    out = str(tmp_path / "s")
    s = study.Study.create(out, {"gamma": ["10", "40"], "seed": ["0", "1"]}, ["--steps", "5"])
    for k, point in enumerate(s.points):
        os.makedirs(point.folder(out))
        gamma = float(point.params["gamma"])
        summary = {"step": 5, "steps": 5, "objective": "factorvae", "device": "cpu", "wall_time_s": 1.0 + k,
                   "final": {"recon": 100.0 + gamma + k, "kl": 20.0, "tc": 0.1},
                   "metrics": {"factor_vae": {"eval_accuracy": gamma / 100 + 0.01 * k},
                               "mig": {"score": 0.05 * k}, "dci": {"dci_disentanglement": 0.2}},
                   "config": {"gamma": gamma, "seed": int(point.params["seed"])}}
        with open(os.path.join(point.folder(out), "summary.json"), "w") as f:
            json.dump(summary, f)
        with open(os.path.join(point.folder(out), "log.jsonl"), "w") as f:
            for step in (1, 5):
                f.write(json.dumps({"step": step, "recon": 200.0 / step + gamma, "kl": 1.0 * step}) + "\n")
    paths = aggregate.aggregate(out)
    table = json.load(open(paths["json"]))
    assert [r["factor_vae.eval_accuracy"] for r in table] == pytest.approx([0.1, 0.11, 0.42, 0.43])
    assert [r["mig.score"] for r in table] == pytest.approx([0.0, 0.05, 0.1, 0.15])
    assert [r["grid.gamma"] for r in table] == [10, 10, 40, 40] and [r["final.recon"] for r in table] == [110, 111, 142, 143]
    _, rows = aggregate.collect(out)
    assert aggregate.score_columns(rows)[:3] == ["factor_vae.eval_accuracy", "mig.score", "dci.dci_disentanglement"]
    assert set(paths) == {"csv", "json", "metrics_vs_gamma", "tradeoff", "curves"}
    assert aggregate.figure_tradeoff(rows, "gamma", str(tmp_path / "t.png")) == "factor_vae.eval_accuracy"


def test_status_reports_failed_points_with_their_error_and_log(tmp_path):
    """A point whose train command fails is reported (error line, log path); the others run."""
    out = str(tmp_path / "s")
    result = _fastfvae("sweep", "--grid", "data=missing.npz,none", "--out", out, "--steps", "10", *TINY)
    assert result.returncode == 1, result.stdout + result.stderr
    report = study.status(out)
    assert report["failed"] == 2  # "none" is not a file either: both fail, neither stops the other
    failed = report["per_point"][0]
    assert "missing.npz" in failed["error"] and failed["log"].endswith("logs/data=missing.npz.log")
    assert f"FAILED data=missing.npz: {failed['error']} (log {failed['log']})" in result.stdout


# ---------------------------------------------------------------------------------------------
def _slurm_up() -> str:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM is not installed (bash scripts/slurm_local.sh start installs and starts a one-node cluster)"
    probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if probe.returncode != 0 or not any(s in probe.stdout for s in ("idle", "mix", "alloc")):
        return "no SLURM cluster answers (start one: bash scripts/slurm_local.sh start)"
    return ""


@pytest.mark.slow
@pytest.mark.skipif(bool(_slurm_up()), reason=_slurm_up() or "SLURM is up")
def test_slurm_sweep_requeued_job_resumes(tmp_path):
    """One job array through the real scheduler; one job is requeued (scontrol requeue) between
    checkpoints: SLURM stops it (SIGTERM: the run checkpoints), runs it again, and the point
    resumes from its checkpoint; the table is complete."""
    out = str(tmp_path / "study")
    result = _fastfvae("sweep", "--grid", "gamma=10,40", "--out", out, "--executor", "slurm", "--cpus-per-job", "1",
                       "--time", "10", "--steps", "100", *TINY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "submitted one SLURM job array" in result.stdout
    s = study.Study.load(out)
    jobs = {p.name: s.record(p.name)["job_id"] for p in s.points}
    array = {j.split("_")[0] for j in jobs.values()}
    assert len(array) == 1  # one array
    target = s.points[1]
    requeued = False
    try:
        deadline = time.time() + 480
        while time.time() < deadline:
            record = s.record(target.name)
            if not requeued and record.get("state") == "running" and study.jobs._checkpoint_step(target.folder(out)):
                subprocess.run(["scontrol", "requeue", jobs[target.name]], check=True)
                requeued = True
            if not requeued and s.state(target)["state"] == "done":
                pytest.fail("the point finished before it could be requeued")
            if requeued and all(s.record(p.name).get("state") in ("done", "failed") for p in s.points):
                break
            time.sleep(0.2)
    finally:
        subprocess.run(["scancel", *array])
    report = study.status(out)
    assert report["done"] == 2, study.format_status(report) + _slurm_logs(out)
    attempts = s.record(target.name)["attempts"]
    assert s.record(target.name)["state"] == "done" and attempts[-1]["exit_code"] == 0, attempts
    assert len(attempts) >= 2 and attempts[-1]["resume_from_step"] >= 10, attempts
    assert attempts[0]["job_id"] == attempts[-1]["job_id"] == jobs[target.name]  # the same job, requeued
    assert aggregate.main([out]) == 0
    with open(os.path.join(out, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["state"] for r in rows] == ["done", "done"] and {r["step"] for r in rows} == {"100"}


def _slurm_logs(out: str) -> str:
    text = []
    for root, _, files in os.walk(out):
        for name in files:
            if name.endswith((".log", ".out", ".err")):
                with open(os.path.join(root, name), errors="replace") as f:
                    text.append(f"\n--- {name}\n" + f.read()[-2000:])
    return "".join(text)
