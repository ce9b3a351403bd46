"""Running the points: PointJob (one point's ``fastfvae train`` child, what submitit runs on this
machine or a SLURM node, checkpointed and requeued on preemption) and the executors (local, SLURM)."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Optional

from fastfvae.study.grid import StudyError
from fastfvae.study.manifest import Point, Study, _now, finished_summary

SIGTERM_EXIT = 128 + signal.SIGTERM
SIGINT_EXIT = 128 + signal.SIGINT


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
