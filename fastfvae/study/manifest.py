"""A study folder's records: the manifest (study.json), the points' job records (jobs/<point>.json),
and each point's state, read from its run folder and job record alone (no scheduler needed)."""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from typing import Optional, Sequence

from fastfvae.study.grid import (
    StudyError, check_train_args, grid_points, point_name, point_train_args, train_option_kinds,
)

MANIFEST_NAME = "study.json"
MANIFEST_FORMAT = "fastfvae-study-1"
STATES = ("done", "running", "failed", "pending")
# Options the sweep sets for every point itself.
RESERVED_OPTIONS = ("out", "resume", "help")


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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _write_json(path: str, value) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
