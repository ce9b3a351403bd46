"""The grid of a study: ``--grid`` items -> points ({option: value}), each point's folder name
and its ``fastfvae train`` arguments, checked by the train command's own parser."""
from __future__ import annotations

import argparse
import contextlib
import io
import re
from typing import Sequence


# Every module of the study raises it: it lives in the one the others import first.
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
