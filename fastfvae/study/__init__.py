"""Studies: ``fastfvae sweep`` (fastfvae/study/jobs.py). The public names, as ``fastfvae.study``."""
from fastfvae.study.jobs import (  # noqa: F401
    MANIFEST_FORMAT, MANIFEST_NAME, RESERVED_OPTIONS, SIGINT_EXIT, SIGTERM_EXIT, STATES, Point, PointJob,
    SlurmOptions, Study, StudyError, build_parser, check_train_args, finished_summary, format_status, grid_points,
    last_progress, main, parse_grid, point_name, point_train_args, run_local, source_commit, status, submit_slurm,
    sweep, to_submit, train_option_kinds, wait,
)
