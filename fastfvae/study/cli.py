"""``fastfvae sweep``: the status report, ``sweep`` (the Python API) and the command's parser."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from fastfvae.study.grid import StudyError, parse_grid
from fastfvae.study.jobs import SlurmOptions, run_local, submit_slurm, to_submit, wait
from fastfvae.study.manifest import STATES, Point, Study


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
