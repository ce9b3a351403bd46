"""Studies: a grid of ``fastfvae train`` runs, run by submitit on this machine or on SLURM.

    fastfvae sweep --grid gamma=10,20,40 --grid seed=0:5 --out runs/study [train options]
    fastfvae sweep --status runs/study
    fastfvae aggregate runs/study          (fastfvae/aggregate.py)

The study folder ``--out`` holds:

    study.json          the manifest: grid, train options, every point (name, folder, options,
                        state), and every submission (executor, job ids)
    <point>/            one normal ``fastfvae train`` run folder per point, named by its options
                        (e.g. gamma=10_seed=0), so evaluate/traverse/--resume work on each
    jobs/<point>.json   the point's job record: state, attempts, job id, host, error line
    logs/<point>.log    the point's train output (stdout and stderr), appended over attempts
    submitit/           submitit's pickles and logs

A point is done when its folder holds a summary.json of a run that reached its --steps (the
trainer's own test of a finished run). Each job runs ``fastfvae train`` in a child process: with
``--resume`` when the folder holds a checkpoint, afresh otherwise. Preemption, a time limit, a
requeue or a cancel all end the child through SIGTERM (the trainer then writes a checkpoint);
the job, requeued by SLURM or submitted again by a later ``fastfvae sweep`` on the same --out,
resumes from that checkpoint, and the trainer's resume is bit-exact. A done point is never
submitted again, so its folder is never touched.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Optional, Sequence

MANIFEST_NAME = "study.json"
MANIFEST_FORMAT = "fastfvae-study-1"
STATES = ("done", "running", "failed", "pending")
# Options the sweep sets for every point itself.
RESERVED_OPTIONS = ("out", "resume", "help")
SIGTERM_EXIT = 128 + signal.SIGTERM
SIGINT_EXIT = 128 + signal.SIGINT


class StudyError(ValueError):
    """A bad grid, option or study folder (the message names it)."""


# ---------------------------------------------------------------------------------------------
# The grid
def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``["gamma=10,20", "seed=0:3"]`` -> {"gamma": ["10", "20"], "seed": ["0", "1", "2"]}.

    Each item is KEY=V1,V2,... or KEY=START:STOP[:STEP] (integers, STOP excluded, as Python's
    range). KEY is a train option's name with or without the leading "--", "-" or "_" alike."""
    grid: dict[str, list[str]] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise StudyError(f"--grid: expected KEY=V1,V2 or KEY=START:STOP, got {item!r}")
        key, _, text = item.partition("=")
        key = key.strip().lstrip("-").replace("_", "-")
        if not key:
            raise StudyError(f"--grid: no option name in {item!r}")
        if key in grid:
            raise StudyError(f"--grid: {key} is given twice")
        values = _grid_values(key, text.strip())
        if len(set(values)) != len(values):
            raise StudyError(f"--grid {key}: repeated values in {text!r}")
        grid[key] = values
    return grid


def _grid_values(key: str, text: str) -> list[str]:
    if ":" in text and "," not in text:
        parts = text.split(":")
        try:
            bounds = [int(p) for p in parts]
        except ValueError:
            raise StudyError(f"--grid {key}: expected integers START:STOP[:STEP], got {text!r}") from None
        if len(bounds) not in (2, 3) or (len(bounds) == 3 and bounds[2] == 0):
            raise StudyError(f"--grid {key}: expected START:STOP[:STEP] with STEP != 0, got {text!r}")
        values = [str(v) for v in range(*bounds)]
    else:
        values = [v.strip() for v in text.split(",")]
    if not values or any(not v for v in values):
        raise StudyError(f"--grid {key}: expected one value or more, got {text!r}")
    return values


def grid_points(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every combination, the last key varying fastest."""
    points: list[dict[str, str]] = [{}]
    for key, values in grid.items():
        points = [{**p, key: v} for p in points for v in values]
    return points


def point_name(params: dict[str, str]) -> str:
    """The folder name of a point: "gamma=10_seed=0" (characters outside [A-Za-z0-9.+-] become "~")."""
    return "_".join(f"{k}={re.sub(r'[^A-Za-z0-9.+-]', '~', v)}" for k, v in params.items()) or "point"


def point_train_args(train_args: Sequence[str], params: dict[str, str], flags: dict[str, str]) -> list[str]:
    """The point's ``fastfvae train`` arguments (without --out): the study's, then the point's.
    ``flags``: {key: "store_true"|"bool"|"value"} of the train options (train_option_kinds)."""
    args = list(train_args)
    for key, value in params.items():
        kind = flags[key]
        if kind == "value":
            args += [f"--{key}", value]
        else:
            on = _boolean(key, value)
            if kind == "bool":
                args.append(f"--{key}" if on else f"--no-{key}")
            elif on:
                args.append(f"--{key}")
    return args


def _boolean(key: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise StudyError(f"--grid {key}: a flag takes true or false, got {value!r}")


def train_option_kinds() -> dict[str, str]:
    """{option name without "--": "value" | "store_true" | "bool"} of ``fastfvae train``."""
    train = _train_parser()
    kinds = {}
    for action in train._actions:
        for option in action.option_strings:
            if not option.startswith("--"):
                continue
            if isinstance(action, argparse.BooleanOptionalAction):
                kind = "bool"
            elif isinstance(action, argparse._StoreTrueAction):
                kind = "store_true"
            else:
                kind = "value"
            kinds[option[2:]] = kind
    return kinds


def _train_parser() -> argparse.ArgumentParser:
    from fastfvae import cli
    subparsers = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices["train"]


def check_train_args(args: Sequence[str]) -> None:
    """Parse ``args`` as ``fastfvae train`` would; StudyError with argparse's message otherwise."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            _train_parser().parse_args(list(args))
    except SystemExit:
        message = stderr.getvalue().strip().splitlines()
        raise StudyError(f"train options {' '.join(args)!r}: {message[-1] if message else 'invalid'}") from None


# ---------------------------------------------------------------------------------------------
# The manifest and the points' states
@dataclasses.dataclass
class Point:
    name: str
    params: dict
    args: list  # fastfvae train arguments, --out excluded

    def folder(self, study_dir: str) -> str:
        return os.path.join(study_dir, self.name)


class Study:
    """A study folder: its manifest (study.json) and the points' folders and job records."""

    def __init__(self, directory: str, manifest: dict):
        self.dir = directory
        self.manifest = manifest
        self.points = [Point(p["name"], p["params"], p["args"]) for p in manifest["points"]]

    # -- creation and loading ------------------------------------------------------------------
    @classmethod
    def create(cls, directory: str, grid: dict[str, list[str]], train_args: Sequence[str]) -> "Study":
        """A new study, or the one ``directory`` holds when its grid and train options are these;
        StudyError otherwise (a study folder holds one grid)."""
        if not isinstance(directory, str) or not directory.strip():
            raise StudyError(f"--out: expected a folder path, got {directory!r}")
        grid = {k: [str(v) for v in vs] for k, vs in grid.items()}
        train_args = [str(a) for a in train_args]
        kinds = train_option_kinds()
        for key in list(grid) + [a[2:].split("=")[0] for a in train_args if a.startswith("--")]:
            if key in RESERVED_OPTIONS:
                raise StudyError(f"--{key}: the sweep sets it for every point; pass --out to the sweep itself")
        for key in grid:
            if key not in kinds:
                raise StudyError(f"--grid {key}: not an option of fastfvae train (see fastfvae train --help)")
        if not grid:
            raise StudyError("--grid: give at least one, e.g. --grid gamma=10,20 --grid seed=0:3")
        points = []
        for params in grid_points(grid):
            args = point_train_args(train_args, params, kinds)
            check_train_args(args + ["--out", "x"])
            points.append({"name": point_name(params), "params": params, "args": args})
        names = [p["name"] for p in points]
        if len(set(names)) != len(names):
            raise StudyError("--grid: two points map to the same folder name; use plainer values")
        path = os.path.join(directory, MANIFEST_NAME)
        if os.path.exists(path):
            study = cls.load(directory)
            if study.manifest["grid"] != grid or study.manifest["train_args"] != train_args:
                raise StudyError(
                    f"{directory} holds a study of another grid or other train options "
                    f"(grid {study.manifest['grid']}, options {study.manifest['train_args']}); "
                    f"re-run it with the same ones or choose another --out")
            return study
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise StudyError(f"--out {directory}: is a file, expected a folder")
        if os.path.isdir(directory) and os.listdir(directory):
            raise StudyError(f"--out {directory}: not empty and holds no {MANIFEST_NAME}; choose another --out")
        manifest = {"format": MANIFEST_FORMAT, "name": os.path.basename(os.path.abspath(directory)),
                    "created": _now(), "grid": grid, "train_args": train_args,
                    "points": points, "submissions": []}
        study = cls(directory, manifest)
        os.makedirs(os.path.join(directory, "jobs"), exist_ok=True)
        os.makedirs(os.path.join(directory, "logs"), exist_ok=True)
        study.save()
        return study

    @classmethod
    def load(cls, directory: str) -> "Study":
        path = os.path.join(directory, MANIFEST_NAME)
        try:
            with open(path) as f:
                manifest = json.load(f)
        except FileNotFoundError:
            raise StudyError(f"{directory}: no {MANIFEST_NAME} (not a study folder made by fastfvae sweep)") from None
        except (OSError, ValueError) as error:
            raise StudyError(f"{path}: unreadable ({error})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise StudyError(f"{path}: not a fastfvae study manifest (format {MANIFEST_FORMAT})")
        return cls(directory, manifest)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    def point(self, name: str) -> Point:
        for point in self.points:
            if point.name == name:
                return point
        raise StudyError(f"{self.dir}: no point named {name!r}")

    def save(self) -> None:
        """Write study.json (with every point's current state), atomically."""
        states = {p.name: self.state(p)["state"] for p in self.points}
        for entry in self.manifest["points"]:
            entry["folder"] = entry["name"]
            entry["state"] = states[entry["name"]]
        _write_json(os.path.join(self.dir, MANIFEST_NAME), self.manifest)

    def record_submission(self, executor: str, jobs: dict[str, str]) -> None:
        """Note a submission in the manifest and each point's job record ({point name: job id})."""
        self.manifest["submissions"].append({"time": _now(), "executor": executor, "jobs": jobs})
        for name, job_id in jobs.items():
            # A job that already started (it writes "running" itself) keeps its state.
            state = "running" if self.record(name).get("state") == "running" else "submitted"
            self.update_record(name, state=state, job_id=job_id, executor=executor, submitted=_now())
        self.save()

    # -- job records ---------------------------------------------------------------------------
    def record_path(self, name: str) -> str:
        return os.path.join(self.dir, "jobs", f"{name}.json")

    def log_path(self, name: str) -> str:
        return os.path.join(self.dir, "logs", f"{name}.log")

    def record(self, name: str) -> dict:
        try:
            with open(self.record_path(name)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def update_record(self, name: str, **fields) -> dict:
        record = self.record(name)
        record.update(fields)
        _write_json(self.record_path(name), record)
        return record

    # -- states --------------------------------------------------------------------------------
    def state(self, point: Point) -> dict:
        """{"state": done|running|failed|pending, "step", "steps", "steps_per_s", ...} of a point,
        from its folder and job record alone (no scheduler needed)."""
        folder = point.folder(self.dir)
        summary = finished_summary(folder)
        progress = last_progress(folder)
        info = {"name": point.name, "folder": folder, "log": self.log_path(point.name), **progress}
        if summary is not None:
            return {**info, "state": "done", "step": summary.get("step"), "steps": summary.get("steps"),
                    "wall_time_s": summary.get("wall_time_s")}
        record = self.record(point.name)
        state = record.get("state")
        if state == "running" and not _alive(record):
            state = "interrupted"
        if state == "running":
            return {**info, "state": "running", "job_id": record.get("job_id")}
        if state == "failed":
            return {**info, "state": "failed", "error": record.get("error", ""), "job_id": record.get("job_id")}
        detail = {"submitted": "queued", "interrupted": "interrupted, resumes from its checkpoint"}.get(state, "")
        return {**info, "state": "pending", "detail": detail, "job_id": record.get("job_id")}

    def states(self) -> list[dict]:
        return [self.state(p) for p in self.points]


def finished_summary(folder: str) -> Optional[dict]:
    """The summary.json of a run that reached its --steps and finished its evaluation, or None."""
    try:
        with open(os.path.join(folder, "summary.json")) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or "interrupted" in summary:
        return None
    return summary if summary.get("step") is not None and summary.get("step") == summary.get("steps") else None


def last_progress(folder: str) -> dict:
    """{"step", "steps_per_s"} of the last training row of the folder's log.jsonl ({} when none)."""
    path = os.path.join(folder, "log.jsonl")
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "event" not in row and "steps_per_s" in row:
            return {"step": row.get("step"), "steps_per_s": row.get("steps_per_s")}
    return {}


def _alive(record: dict) -> bool:
    """A job recorded as running still is: its process lives (same host), or it runs elsewhere."""
    if record.get("host") != socket.gethostname():
        return True
    pid = record.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------------
# One point's job: what submitit runs (on this machine or a SLURM node)
def _load_submitit():
    try:
        import submitit
    except ImportError:
        raise StudyError("fastfvae sweep needs submitit: pip install 'fastfvae[study]' (or pip install submitit)") from None
    return submitit


def _checkpointable_base():
    try:
        import submitit
        return submitit.helpers.Checkpointable
    except ImportError:  # the class is defined all the same; submitting it asks for submitit
        return object


class PointJob(_checkpointable_base()):
    """Runs one point: ``fastfvae train --out <point folder> [--resume]`` in a child process.

    submitit calls ``checkpoint`` on SLURM's preemption/time-limit signal (USR2): the child gets
    SIGTERM, writes its checkpoint and exits, and the job is requeued with this same object; the
    next attempt resumes from the checkpoint."""

    def __init__(self, study_dir: str, name: str, threads: Optional[int] = None,
                 cpus: Optional[list] = None, loggers_group: Optional[str] = None):
        self.study_dir = os.path.abspath(study_dir)
        self.name = name
        self.threads = threads
        self.cpus = cpus
        self.group = loggers_group
        self._child: Optional[subprocess.Popen] = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_child"] = None
        return state

    def __call__(self) -> dict:
        study = Study.load(self.study_dir)
        point = study.point(self.name)
        folder = point.folder(study.dir)
        if finished_summary(folder) is not None:
            return study.update_record(point.name, state="done")
        args = ["train", *point.args, "--out", folder]
        resume_from = _checkpoint_step(folder)
        if resume_from is not None:
            args.append("--resume")
        else:
            _clear_unstarted(folder)  # records of a run that died before its first checkpoint
        threads = self.threads or _slurm_cpus()
        if threads and not any(a == "--threads" or a.startswith("--threads=") for a in args):
            args += ["--threads", str(threads)]
        record = study.record(point.name)
        attempts = record.get("attempts", []) + [{"start": _now(), "resume_from_step": resume_from,
                                                  "job_id": _job_id(), "host": socket.gethostname()}]
        study.update_record(point.name, state="running", pid=os.getpid(), host=socket.gethostname(),
                            job_id=_job_id(), attempts=attempts, error=None, log=study.log_path(point.name),
                            commit=source_commit())
        code = self._run_child(args, study.log_path(point.name), threads, study.name)
        attempts[-1].update(end=_now(), exit_code=code)
        if finished_summary(folder) is not None:  # finished (a signal may come as it exits)
            return study.update_record(point.name, state="done", attempts=attempts)
        if code in (SIGTERM_EXIT, SIGINT_EXIT):
            study.update_record(point.name, state="interrupted", attempts=attempts)
            raise RuntimeError(f"{point.name}: stopped by a signal at step {_checkpoint_step(folder)}; "
                               f"it resumes from its checkpoint when run again")
        error = _error_line(study.log_path(point.name)) or f"fastfvae train exited with status {code}"
        study.update_record(point.name, state="failed", attempts=attempts, error=error)
        raise RuntimeError(f"{point.name}: {error} (log {study.log_path(point.name)})")

    def _run_child(self, args: list, log_path: str, threads: Optional[int], group: str) -> int:
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        env.setdefault("FASTFVAE_STUDY", self.group or group)
        env.setdefault("WANDB_RUN_GROUP", self.group or group)
        env.setdefault("WANDB_NAME", self.name)
        cpus = self.cpus

        def in_child():
            _die_with_parent()
            if cpus:
                os.sched_setaffinity(0, cpus)

        with open(log_path, "a") as log:
            log.write(f"==== {_now()} fastfvae {' '.join(args)} (host {socket.gethostname()}, job {_job_id()})\n")
            log.flush()
            self._child = subprocess.Popen([sys.executable, "-m", "fastfvae", *args], stdout=log,
                                           stderr=subprocess.STDOUT, env=env, preexec_fn=in_child)
            try:
                return self._wait_child()
            finally:
                self._child = None

    def _wait_child(self) -> int:
        child = self._child
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:  # the local executor's cancel: the child checkpoints
                child.send_signal(signal.SIGTERM)

    def checkpoint(self, *args, **kwargs):
        """Preemption or time limit (submitit's USR2 handler): stop the child, which checkpoints,
        then requeue this job; the next attempt resumes."""
        import submitit
        child = self._child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=60)
        with contextlib.suppress(Exception):
            Study.load(self.study_dir).update_record(self.name, state="interrupted")
        return submitit.helpers.DelayedSubmission(PointJob(self.study_dir, self.name, self.threads, self.cpus, self.group))


def source_commit() -> Optional[str]:
    """The git commit of the fastfvae source that runs (with "-dirty" for uncommitted changes to
    tracked files), or None outside a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def _die_with_parent() -> None:
    """In the train child: receive SIGTERM (and so checkpoint) if the job process dies first."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the child then outlives a killed job
        pass


def _checkpoint_step(folder: str) -> Optional[int]:
    """The step of the folder's checkpoint (None when there is none or it is unreadable)."""
    path = os.path.join(folder, "checkpoint.pt")
    if not os.path.exists(path):
        return None
    try:
        from fastfvae.train.checkpoint import load_checkpoint
        return int(load_checkpoint(path)["step"])
    except Exception:  # the trainer reports an unreadable checkpoint itself
        return 0


def _clear_unstarted(folder: str) -> None:
    """A run that died before its first checkpoint left log.jsonl (and maybe more) but nothing
    to resume: remove those, so the point starts afresh (the train folder check refuses them)."""
    for name in ("log.jsonl", "summary.json"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, name))


def _slurm_cpus() -> Optional[int]:
    value = os.environ.get("SLURM_CPUS_PER_TASK")
    return int(value) if value and value.isdigit() else None


def _job_id() -> Optional[str]:
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")


def _error_line(log_path: str) -> str:
    """The last "error" line of the point's log (the train command's one-line error)."""
    try:
        with open(log_path, errors="replace") as f:
            lines = f.read().splitlines()[-200:]
    except OSError:
        return ""
    for line in reversed(lines):
        if "error" in line.lower() and not line.startswith("===="):
            return line.strip()
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


# ---------------------------------------------------------------------------------------------
# Executors
@dataclasses.dataclass
class SlurmOptions:
    partition: Optional[str] = None
    gpus_per_job: int = 0
    cpus_per_job: int = 1
    time_min: int = 60
    array_parallelism: int = 256
    extra: dict = dataclasses.field(default_factory=dict)   # more sbatch parameters, name: value
    max_requeues_on_timeout: int = 10


def to_submit(study: Study) -> list[Point]:
    """The points that are neither done nor running."""
    states = {s["name"]: s["state"] for s in study.states()}
    return [p for p in study.points if states[p.name] not in ("done", "running")]


def run_local(study: Study, points: list[Point], max_parallel: int = 1, threads: Optional[int] = None,
              say=print) -> list[dict]:
    """Run ``points`` through submitit's local executor, ``max_parallel`` at a time, each pinned
    to its own ``threads`` CPUs (default: this machine's CPUs shared evenly). Waits for them all;
    returns their states. SIGINT/SIGTERM cancel the running jobs (their runs checkpoint)."""
    submitit = _load_submitit()
    if not isinstance(max_parallel, int) or max_parallel < 1:
        raise StudyError(f"--max-parallel: expected a positive integer, got {max_parallel!r}")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    share = threads or max(1, len(cpus) // max_parallel)
    executor = submitit.LocalExecutor(folder=os.path.join(study.dir, "submitit", "%j"))
    executor.update_parameters(timeout_min=60 * 24 * 30)
    queue, running, free_slots = list(points), {}, list(range(max_parallel))
    with _cancel_on_signal(running):
        while queue or running:
            while queue and free_slots:
                point, slot = queue.pop(0), free_slots.pop(0)
                slot_cpus = [cpus[(slot * share + k) % len(cpus)] for k in range(share)]
                job = executor.submit(PointJob(study.dir, point.name, share, slot_cpus))
                study.record_submission("local", {point.name: str(job.job_id)})
                running[point.name] = (job, slot)
                say(f"started {point.name} (job {job.job_id}, CPUs {slot_cpus})")
            time.sleep(0.5)
            for name, (job, slot) in list(running.items()):
                if job.done():
                    del running[name]
                    free_slots.append(slot)
                    say(_finished_line(study, study.point(name)))
    study.save()
    return [study.state(p) for p in points]


@contextlib.contextmanager
def _cancel_on_signal(running: dict):
    """SIGINT/SIGTERM while the local sweep waits: cancel its jobs (each run checkpoints), then stop."""
    def handler(signum, frame):
        for job, _ in running.values():
            job.cancel(check=False)
        raise KeyboardInterrupt
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def submit_slurm(study: Study, points: list[Point], options: SlurmOptions) -> dict[str, str]:
    """One job array of ``points`` on SLURM; returns {point name: job id}."""
    submitit = _load_submitit()
    executor = submitit.SlurmExecutor(folder=os.path.join(study.dir, "submitit", "%j"),
                                      max_num_timeout=options.max_requeues_on_timeout)
    params = dict(time=options.time_min, cpus_per_task=options.cpus_per_job, ntasks_per_node=1, nodes=1,
                  array_parallelism=options.array_parallelism, job_name=f"fastfvae-{study.name}",
                  additional_parameters=dict(options.extra))
    if options.partition:
        params["partition"] = options.partition
    if options.gpus_per_job:
        params["gpus_per_node"] = options.gpus_per_job
    executor.update_parameters(**params)
    jobs = executor.submit_array([PointJob(study.dir, p.name, options.cpus_per_job) for p in points])
    ids = {p.name: str(job.job_id) for p, job in zip(points, jobs)}
    study.record_submission("slurm", ids)
    return ids


def wait(study: Study, points: list[Point], poll_s: float = 2.0, say=print) -> list[dict]:
    """Wait until none of ``points`` is pending or running (from the files alone)."""
    reported = set()
    while True:
        states = [study.state(p) for p in points]
        for s in states:
            if s["state"] in ("done", "failed") and s["name"] not in reported:
                reported.add(s["name"])
                say(_finished_line(study, study.point(s["name"])))
        if all(s["state"] in ("done", "failed") for s in states):
            study.save()
            return states
        time.sleep(poll_s)


def _finished_line(study: Study, point: Point) -> str:
    s = study.state(point)
    if s["state"] == "failed":
        return f"FAILED {point.name}: {s.get('error')} (log {s['log']})"
    if s["state"] == "done":
        return f"done {point.name}"
    return f"{s['state']} {point.name} {s.get('detail', '')}".rstrip()


# ---------------------------------------------------------------------------------------------
# Status
def status(study_dir: str) -> dict:
    """Counts per state, steps done and an ETA, from the study folder alone."""
    study = Study.load(study_dir)
    states = study.states()
    total = sum(_point_steps(p) for p in study.points)
    done_steps = 0
    for s, p in zip(states, study.points):
        done_steps += _point_steps(p) if s["state"] == "done" else int(s.get("step") or 0)
    rates = [float(s["steps_per_s"]) for s in states if s["state"] == "running" and s.get("steps_per_s")]
    eta = (total - done_steps) / sum(rates) if rates and sum(rates) > 0 else None
    counts = {state: sum(s["state"] == state for s in states) for state in STATES}
    return {"study": study.dir, "points": len(states), **counts, "steps_done": done_steps,
            "steps_total": total, "eta_s": round(eta) if eta is not None else None, "per_point": states}


def _point_steps(point: Point) -> int:
    args = point.args
    for k, a in enumerate(args):
        if a == "--steps" and k + 1 < len(args):
            return int(args[k + 1])
        if a.startswith("--steps="):
            return int(a.split("=", 1)[1])
    from fastfvae.train import DEFAULT_STEPS
    return DEFAULT_STEPS


def format_status(report: dict) -> str:
    from fastfvae.train.records import format_duration
    eta = format_duration(report["eta_s"]) if report["eta_s"] is not None else "unknown (nothing running)"
    lines = [f"{report['study']}: {report['points']} points: {report['done']} done, {report['running']} running, "
             f"{report['failed']} failed, {report['pending']} pending; steps {report['steps_done']}/"
             f"{report['steps_total']}; ETA {eta}"]
    for s in report["per_point"]:
        step = f" step {s['step']}" if s.get("step") is not None else ""
        extra = {"failed": f": {s.get('error')} (log {s['log']})", "pending": f" {s.get('detail') or ''}"}.get(s["state"], "")
        lines.append(f"  {s['state']:8s} {s['name']}{step}{extra}".rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The Python API and the command
def sweep(out: str, grid: dict[str, list] | Sequence[str], train_args: Sequence[str] = (), executor: str = "local",
          max_parallel: int = 1, threads: Optional[int] = None, slurm: Optional[SlurmOptions] = None,
          wait_for_slurm: bool = False, say=print) -> dict:
    """Run (or continue) the study in ``out``: ``grid`` as {option: [values]} or as --grid items.
    Submits the points that are neither done nor running. Returns ``status(out)``."""
    if executor not in ("local", "slurm"):
        raise StudyError(f"--executor: expected local or slurm, got {executor!r}")
    if not isinstance(grid, dict):
        grid = parse_grid(list(grid))
    study = Study.create(out, grid, train_args)
    points = to_submit(study)
    skipped = len(study.points) - len(points)
    say(f"study {study.dir}: {len(study.points)} points, {len(points)} to run"
        + (f" ({skipped} done or running, left as they are)" if skipped else ""))
    if points and executor == "local":
        run_local(study, points, max_parallel, threads, say)
    elif points:
        ids = submit_slurm(study, points, slurm or SlurmOptions())
        say(f"submitted one SLURM job array: {', '.join(f'{n} {j}' for n, j in ids.items())}")
        if wait_for_slurm:
            wait(study, points, say=say)
    study.save()
    return status(out)


def _extra_parameters(items: Sequence[str]) -> dict:
    extra = {}
    for item in items:
        key, sep, value = item.lstrip("-").partition("=")
        if not key:
            raise StudyError(f"--sbatch: expected NAME=VALUE (e.g. qos=high), got {item!r}")
        extra[key.replace("-", "_")] = value if sep else True
    return extra


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastfvae sweep", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a grid of fastfvae train runs (one run folder per point) through submitit, "
                    "on this machine or on SLURM. Every option not listed here is a train option "
                    "given to every point.",
        epilog="example: fastfvae sweep --grid gamma=10,20,40 --grid seed=0:3 --out runs/study --steps 1500\n"
               "then:    fastfvae sweep --status runs/study; fastfvae aggregate runs/study\n"
               "Re-running the same command continues the study: done points are never touched, the\n"
               "others are submitted again and resume from their checkpoints.")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2|KEY=START:STOP",
                   help="a train option and its values (repeatable; the grid is their product)")
    p.add_argument("--out", metavar="DIR", help="the study folder")
    p.add_argument("--status", metavar="DIR", help="print the study's progress and exit (no scheduler needed)")
    p.add_argument("--executor", choices=("local", "slurm"), default="local", help="(default: %(default)s)")
    p.add_argument("--max-parallel", type=int, default=1, help="local: runs at a time (default: %(default)s)")
    p.add_argument("--threads-per-job", type=int, default=None,
                   help="local: CPU threads (and pinned CPUs) per run (default: the CPUs / --max-parallel)")
    p.add_argument("--partition", default=None, help="slurm: partition (default: the cluster's default)")
    p.add_argument("--gpus-per-job", type=int, default=0, help="slurm: GPUs per job (default: %(default)s)")
    p.add_argument("--cpus-per-job", type=int, default=1, help="slurm: CPUs (and threads) per job (default: %(default)s)")
    p.add_argument("--time", type=int, default=60, metavar="MINUTES",
                   help="slurm: time limit per job; a job that reaches it checkpoints and is requeued (default: %(default)s)")
    p.add_argument("--array-parallelism", type=int, default=256, help="slurm: jobs of the array at a time (default: %(default)s)")
    p.add_argument("--sbatch", action="append", default=[], metavar="NAME=VALUE",
                   help="slurm: another sbatch parameter, e.g. --sbatch qos=high --sbatch account=lab (repeatable)")
    p.add_argument("--wait", action="store_true", help="slurm: wait until every submitted point is done or failed")
    return p


def main(argv: Sequence[str]) -> int:
    """``fastfvae sweep ...``: 0 when every point is done (or, on SLURM without --wait, submitted),
    1 on an error or a failed point."""
    parser = build_parser()
    args, train_args = parser.parse_known_args(list(argv))
    try:
        if args.status:
            print(format_status(status(args.status)))
            return 0
        if not args.out:
            parser.error("--out DIR is required (or --status DIR)")
        for name in ("max_parallel", "gpus_per_job", "cpus_per_job", "time", "array_parallelism"):
            value = getattr(args, name)
            if value < (0 if name == "gpus_per_job" else 1):
                raise StudyError(f"--{name.replace('_', '-')}: expected a {'non-negative' if name == 'gpus_per_job' else 'positive'} integer, got {value}")
        slurm = SlurmOptions(partition=args.partition, gpus_per_job=args.gpus_per_job, cpus_per_job=args.cpus_per_job,
                             time_min=args.time, array_parallelism=args.array_parallelism,
                             extra=_extra_parameters(args.sbatch))
        report = sweep(args.out, parse_grid(args.grid), train_args, args.executor, args.max_parallel,
                       args.threads_per_job, slurm, args.wait, say=lambda m: print(m, flush=True))
    except StudyError as error:
        print(f"fastfvae sweep: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fastfvae sweep: interrupted; the running points checkpoint; run the same command again to continue",
              file=sys.stderr)
        return 130
    print(format_status(report))
    if report["failed"]:
        return 1
    return 0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _write_json(path: str, value) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
