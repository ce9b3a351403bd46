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

One job per module, each importing only the ones above it:

    grid.py       --grid items -> points and their train arguments (train's parser checks them)
    manifest.py   Study and Point: study.json, the job records, every point's state from the files
    jobs.py       PointJob (one point's train child, what submitit runs); the local and SLURM executors
    cli.py        status, sweep (the Python API) and the ``fastfvae sweep`` command
"""
from fastfvae.study.grid import (
    StudyError, check_train_args, grid_points, parse_grid, point_name, point_train_args, train_option_kinds,
)
from fastfvae.study.manifest import (
    MANIFEST_FORMAT, MANIFEST_NAME, RESERVED_OPTIONS, STATES, Point, Study, finished_summary, last_progress,
)
from fastfvae.study.jobs import (
    SIGINT_EXIT, SIGTERM_EXIT, PointJob, SlurmOptions, run_local, source_commit, submit_slurm, to_submit, wait,
)
from fastfvae.study.cli import build_parser, format_status, main, status, sweep

__all__ = [
    "MANIFEST_FORMAT", "MANIFEST_NAME", "RESERVED_OPTIONS", "SIGINT_EXIT", "SIGTERM_EXIT", "STATES", "Point", "PointJob",
    "SlurmOptions", "Study", "StudyError", "build_parser", "check_train_args", "finished_summary", "format_status",
    "grid_points", "last_progress", "main", "parse_grid", "point_name", "point_train_args", "run_local",
    "source_commit", "status", "submit_slurm", "sweep", "to_submit", "train_option_kinds", "wait",
]
