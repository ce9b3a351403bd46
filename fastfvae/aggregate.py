"""``fastfvae aggregate STUDY``: a study's table and the field's figures.

    results.csv, results.json   one row per point: its state, swept options, every train option
                                (config.*), steps, wall and train time, device, commit, the final
                                loss terms (final.*), the KL per dimension summary and the
                                metric battery's headline scores (<metric>.<score>) when it ran
    metrics_vs_<option>.png     each score against a swept option: a box per value over the
                                other options' points (seeds), as disentanglement_lib's study plots
    tradeoff.png                reconstruction error against disentanglement, one colour per
                                value of gamma (or of the first swept option that is not the seed),
                                the FactorVAE paper's trade-off plot
    curves.png                  the training curves of every point overlaid, one panel per term

The figures are drawn with matplotlib (Agg, no display needed). Only done points enter the
figures; the table lists every point with its state.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from typing import Optional, Sequence

from fastfvae.metrics.suite import SCORE_KEYS
from fastfvae.study import Study, StudyError, finished_summary

# Which score is "disentanglement" on the trade-off plot, in order of preference.
DISENTANGLEMENT_SCORES = ("factor_vae.eval_accuracy", "beta_vae.eval_accuracy", "mig.score", "dci.dci_disentanglement")
SEED = "seed"


def collect(study_dir: str) -> tuple[Study, list[dict]]:
    """The study and one flat row (column: value) per point."""
    study = Study.load(study_dir)
    rows = []
    for point, state in zip(study.points, study.states()):
        row: dict = {"point": point.name, "state": state["state"], "folder": point.name}
        row.update({f"grid.{k}": _number(v) for k, v in point.params.items()})
        summary = finished_summary(point.folder(study.dir)) or {}
        record = study.record(point.name)
        row["commit"] = summary.get("commit") or record.get("commit")
        for key in ("step", "steps", "wall_time_s", "train_time_s", "steps_per_s", "device", "world_size",
                    "metrics_time_s", "active_dims"):
            row[key] = summary.get(key)
        if state["state"] == "failed":
            row["error"] = state.get("error")
        for term, value in (summary.get("final") or {}).items():
            row[f"final.{term}"] = value
        kl = summary.get("kl_per_dim")
        if isinstance(kl, list) and kl:
            row["kl_per_dim.sum"] = round(sum(kl), 4)
        for metric, scores in _scores(summary.get("metrics")).items():
            row[metric] = scores
        for option, value in (summary.get("config") or {}).items():
            row[f"config.{option}"] = value
        rows.append(row)
    return study, rows


def _scores(metrics) -> dict:
    """{"<metric>.<score>": value} of the battery's headline scores (metrics.suite.SCORE_KEYS)."""
    out = {}
    if not isinstance(metrics, dict):
        return out
    for metric, keys in SCORE_KEYS.items():
        entry = metrics.get(metric)
        if isinstance(entry, dict):
            for key in keys:
                value = entry.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    out[f"{metric}.{key}"] = float(value)
    return out


def _number(text):
    """A grid value as a number when it is one (for sorting and plotting), else the text."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return int(value) if value.is_integer() and "." not in str(text) and "e" not in str(text).lower() else value


def write_table(rows: list[dict], out_dir: str) -> dict:
    """results.csv and results.json in ``out_dir``; returns their paths."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    paths = {"csv": os.path.join(out_dir, "results.csv"), "json": os.path.join(out_dir, "results.json")}
    tmp = f"{paths['csv']}.tmp-{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _cell(row.get(c)) for c in columns})
    os.replace(tmp, paths["csv"])
    tmp = f"{paths['json']}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(rows, f, indent=2)
        f.write("\n")
    os.replace(tmp, paths["json"])
    return paths


def _cell(value):
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "" if value is None else value


# ---------------------------------------------------------------------------------------------
# Figures
def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def score_columns(rows: list[dict]) -> list[str]:
    """The numeric result columns worth a panel: metric scores, then the final loss terms."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    metrics = [c for c in columns if c.split(".")[0] in SCORE_KEYS]
    finals = [c for c in columns if c.startswith("final.")]
    extra = [c for c in ("active_dims",) if c in columns]
    return [c for c in metrics + finals + extra if any(_is_number(r.get(c)) for r in rows)]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _sorted_values(rows: list[dict], column: str) -> list:
    values = {r[column] for r in rows if r.get(column) is not None}
    return sorted(values, key=lambda v: (isinstance(v, str), v))


def figure_metrics_vs(rows: list[dict], option: str, path: str) -> None:
    """One panel per score: a box per value of ``option`` over the points that share it."""
    plt = _pyplot()
    column = f"grid.{option}"
    columns = score_columns(rows)
    values = _sorted_values(rows, column)
    ncol = min(4, max(1, len(columns)))
    nrow = -(-len(columns) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.8 * nrow), squeeze=False)
    for ax, score in zip(axes.flat, columns):
        groups = [[r[score] for r in rows if r.get(column) == v and _is_number(r.get(score))] for v in values]
        ax.boxplot(groups, showmeans=False)
        for k, group in enumerate(groups, start=1):  # every point, so a box of two seeds is readable
            ax.scatter([k] * len(group), group, s=12, color="tab:blue", alpha=0.7, zorder=3)
        ax.set_xticks(range(1, len(values) + 1), [str(v) for v in values])
        ax.set_xlabel(option)
        ax.set_title(score, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    fig.suptitle(f"scores against {option} (a box per value, dots: points)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def figure_tradeoff(rows: list[dict], colour_option: Optional[str], path: str) -> str:
    """Reconstruction error (x) against a disentanglement score (y), one colour per value of
    ``colour_option``. Returns the y column used."""
    plt = _pyplot()
    y_column = next((c for c in DISENTANGLEMENT_SCORES if any(_is_number(r.get(c)) for r in rows)), None)
    y_label = y_column
    if y_column is None:  # no metric battery in this study: the discriminator's TC estimate instead
        y_column, y_label = "final.tc", "final TC estimate (no disentanglement metric in this study)"
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    column = f"grid.{colour_option}" if colour_option else None
    values = _sorted_values(rows, column) if column else [None]
    cmap = plt.get_cmap("viridis", max(2, len(values)))
    for k, value in enumerate(values):
        chosen = [r for r in rows if (column is None or r.get(column) == value)
                  and _is_number(r.get("final.recon")) and _is_number(r.get(y_column))]
        ax.scatter([r["final.recon"] for r in chosen], [r[y_column] for r in chosen], s=36, color=cmap(k),
                   label=f"{colour_option} = {value}" if column else None, edgecolor="black", linewidth=0.4)
    ax.set_xlabel("reconstruction error (final recon, nats)")
    ax.set_ylabel(y_label, fontsize=8 if y_column == "final.tc" else 10)
    if column:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("reconstruction against disentanglement", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return y_column


def figure_curves(study: Study, rows: list[dict], colour_option: Optional[str], path: str) -> None:
    """The training curves of every done point overlaid: one panel per logged term."""
    from fastfvae.train.artefacts import read_series
    plt = _pyplot()
    curves = {}
    for row in rows:
        log = os.path.join(study.dir, row["folder"], "log.jsonl")
        if os.path.exists(log):
            curves[row["point"]] = (row, read_series(log))
    names: list[str] = []
    for _, series in curves.values():
        names += [n for n in series if n not in names]
    column = f"grid.{colour_option}" if colour_option else None
    values = _sorted_values(rows, column) if column else [None]
    cmap = plt.get_cmap("viridis", max(2, len(values)))
    ncol = min(3, max(1, len(names)))
    nrow = max(1, -(-len(names) // ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 2.8 * nrow), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for point, (row, series) in curves.items():
            if name in series:
                colour = cmap(values.index(row.get(column))) if column else "tab:blue"
                ax.plot(*series[name], color=colour, linewidth=0.9, alpha=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if column:
        handles = [plt.Line2D([], [], color=cmap(k), label=f"{colour_option} = {v}") for k, v in enumerate(values)]
        fig.legend(handles=handles, loc="upper right", fontsize=8)
    fig.suptitle(f"training curves of {len(curves)} point{'s' if len(curves) != 1 else ''}", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    _pyplot().close(fig)
    os.replace(tmp, path)


def colour_option(study: Study) -> Optional[str]:
    """gamma when swept, else the first swept option that is not the seed (None: only seeds)."""
    keys = [k for k in study.manifest["grid"] if k != SEED]
    return "gamma" if "gamma" in keys else (keys[0] if keys else None)


def aggregate(study_dir: str, out_dir: Optional[str] = None) -> dict:
    """Write the table and the figures (module docstring); returns {name: path}."""
    study, rows = collect(study_dir)
    out_dir = out_dir or study.dir
    os.makedirs(out_dir, exist_ok=True)
    paths = write_table(rows, out_dir)
    done = [r for r in rows if r["state"] == "done"]
    if not done:
        return paths
    swept = [k for k in study.manifest["grid"] if k != SEED] or list(study.manifest["grid"])
    for option in swept:
        paths[f"metrics_vs_{option}"] = os.path.join(out_dir, f"metrics_vs_{option}.png")
        figure_metrics_vs(done, option, paths[f"metrics_vs_{option}"])
    paths["tradeoff"] = os.path.join(out_dir, "tradeoff.png")
    figure_tradeoff(done, colour_option(study), paths["tradeoff"])
    paths["curves"] = os.path.join(out_dir, "curves.png")
    figure_curves(study, done, colour_option(study), paths["curves"])
    return paths


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="fastfvae aggregate",
                                     description="The table (CSV, JSON) and figures (PNG) of a study made by fastfvae sweep.")
    parser.add_argument("study", metavar="DIR", help="the study folder (--out of fastfvae sweep)")
    parser.add_argument("--out", default=None, metavar="DIR", help="where to write them (default: the study folder)")
    args = parser.parse_args(list(argv))
    try:
        paths = aggregate(args.study, args.out)
    except (StudyError, OSError) as error:
        print(f"fastfvae aggregate: error: {error}", file=sys.stderr)
        return 1
    study, rows = collect(args.study)
    counts = {s: sum(r["state"] == s for r in rows) for s in ("done", "running", "failed", "pending")}
    print(f"{len(rows)} points ({', '.join(f'{n} {s}' for s, n in counts.items())}); written: "
          + ", ".join(paths.values()))
    return 0
