#!/usr/bin/env python3
"""pytest-benchmark JSON -> a markdown table of fastfvae's speed-ups over each baseline.

    pytest bench/ --benchmark-only --benchmark-json=results.json
    python bench/report.py results.json [more.json ...] > table.md     (or --output table.md)

For every op and device: one row per (direction, size, fastfvae backend) with fastfvae's median
time and, per baseline, the baseline's median and the ratio baseline / fastfvae (> 1: fastfvae
is faster). Ratios under 1 are marked SLOWER and listed again at the end; nothing is hidden.
Then peak memory of the full passes, achieved GB/s of the memory-bound ops against a large copy
measured in the same run, and the issue targets with met / NOT met. A JSON written by
``python -m bench.roofline --json ...`` adds its roofline table (each op's time against its floor
on the machine it ran on); a report of roofline files alone is just those tables.

Only the standard library is used, so the report can be made anywhere.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


def _registry():
    """fastfvae/registry.py (the op list), read by path: this report imports nothing of the package."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "fastfvae" / "registry.py"
    spec = importlib.util.spec_from_file_location("fastfvae_registry", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


OP_ORDER = ["loss_head", "train_step", *_registry().OPS, *_registry().TORCH_OPS]
DIRECTION_ORDER = {"forward": 0, "backward": 1, "full": 2}
MEMORY_BOUND = {"reparameterize_kl", "permute_dims"}
SLOWER = "**SLOWER**"
# rows read by the targets alone (their timing is of a round of calls)
TARGET_ONLY = {"step_interleaved", "loss_head_interleaved"}


# --------------------------------------------------------------------------------------------- loading
def load(paths: list[str]) -> tuple[dict, list[dict]]:
    """(machine_info and run metadata of the first benchmark file, plus the records of any
    roofline files under "rooflines"; every benchmark row with stats)."""
    meta, rows, rooflines = None, [], []
    for path in paths:
        data = json.loads(Path(path).read_text())
        if "roofline" in data:
            rooflines.append(data)
            continue
        if meta is None:
            meta = {"machine_info": data.get("machine_info", {}), "commit_info": data.get("commit_info", {}),
                    "datetime": data.get("datetime", "")}
        for bench in data.get("benchmarks", []):
            info = bench.get("extra_info") or {}
            if "impl" not in info or not bench.get("stats"):
                continue
            rows.append({**info, "median": bench["stats"]["median"], "min": bench["stats"]["min"],
                         "rounds": bench["stats"]["rounds"], "group": bench.get("group")})
    meta = meta or {"machine_info": {}, "commit_info": {}, "datetime": ""}
    meta["rooflines"] = rooflines
    return meta, rows


# --------------------------------------------------------------------------------------------- format
def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "—"
    return f"{ratio:.2f}×" + (f" {SLOWER}" if ratio < 1 else "")


def size_key(row: dict) -> tuple:
    return (DIRECTION_ORDER.get(row["direction"], 9), row["B"], row["D"])


# --------------------------------------------------------------------------------------------- analysis
def by_group(rows: list[dict]) -> dict:
    """(op, device) -> {(direction, B, D): {impl: row}}."""
    groups: dict = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        groups[(row["op"], row["device"])][(row["direction"], row["B"], row["D"])][row["impl"]] = row
    return groups


def comparisons(rows: list[dict]) -> list[dict]:
    """Every (fastfvae impl, baseline) pair measured in the same group, with both ratios."""
    out = []
    for (op, device), cells in by_group(rows).items():
        for (direction, batch, dim), impls in cells.items():
            ours = [r for r in impls.values() if r["role"] == "fastfvae"]
            theirs = [r for r in impls.values() if r["role"] == "baseline"]
            for a in ours:
                for b in theirs:
                    out.append({"op": op, "device": device, "direction": direction, "B": batch, "D": dim,
                                "fastfvae": a["impl"], "baseline": b["impl"], "t_fastfvae": a["median"],
                                "t_baseline": b["median"], "ratio": b["median"] / a["median"],
                                "min_ratio": b["min"] / a["min"]})
    return out


def find(comps: list[dict], **where) -> list[dict]:
    return [c for c in comps if all(c.get(k) == v for k, v in where.items())]


# --------------------------------------------------------------------------------------------- sections
def header(meta: dict, rows: list[dict]) -> list[str]:
    mi = meta["machine_info"]
    ff = mi.get("fastfvae", {})
    cpu = ff.get("cpu_model") or mi.get("cpu", {}).get("brand_raw") or mi.get("processor") or "unknown CPU"
    commit = ff.get("fastfvae_commit") or (meta["commit_info"].get("id", "")[:7] or "unknown")
    lines = [
        f"Measured {meta['datetime'][:19].replace('T', ' ')} UTC at fastfvae commit {commit}.",
        "",
        f"- machine: {cpu}, {ff.get('cpu_count', mi.get('cpu', {}).get('count', '?'))} cores "
        f"(torch threads: {ff.get('torch_threads', '?')}), Python {mi.get('python_version', '?')}",
        f"- torch {ff.get('torch', '?')}, triton {ff.get('triton') or 'not installed'}, "
        f"CUDA {ff.get('cuda') or 'none'}, GPU: {ff.get('gpu') or 'none'}",
    ]
    if ff.get("loadavg_start") is not None:
        lines.append(f"- load average (1 min) at start / end of the run: {ff['loadavg_start']:.2f} / "
                     f"{ff.get('loadavg_end', float('nan')):.2f} (other processes share these cores: "
                     "timings are noisy; ratios come from one run)")
    copies = {}
    for row in rows:
        if row.get("copy_gbps"):
            copies[row["device"]] = row["copy_gbps"]
    if copies:
        lines.append("- large-copy bandwidth measured in this run: "
                     + ", ".join(f"{d} {v:.1f} GB/s" for d, v in sorted(copies.items())))
    lines += [
        f"- mode: {ff.get('mode', '?')}; times are medians over fresh inputs per round (setup outside "
        "the timed region; CUDA synchronised inside it); ratio = baseline median / fastfvae median, "
        "> 1 means fastfvae is faster",
        f"- memory: {ff.get('cpu_memory_method', 'see bench/README.md')}; "
        "cuda: max_memory_allocated above the memory live before the pass",
    ]
    return lines


def op_table(op: str, device: str, cells: dict) -> list[str]:
    baselines = sorted({i for impls in cells.values() for i, r in impls.items() if r["role"] == "baseline"})
    ours_names = sorted({i for impls in cells.values() for i, r in impls.items() if r["role"] == "fastfvae"})
    lines = [f"### {op} ({device})", ""]
    head = ["direction", "B×D", "fastfvae impl", "fastfvae median"] + [f"{b}: median (speed-up)" for b in baselines]
    if op in MEMORY_BOUND:
        head.append("fastfvae GB/s (% of copy)")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in sorted(cells, key=lambda k: (DIRECTION_ORDER.get(k[0], 9), k[1], k[2])):
        direction, batch, dim = key
        impls = cells[key]
        for name in ours_names or ["—"]:
            ours = impls.get(name)
            row = [direction, f"{batch}×{dim}", name if ours else "— (not run)", fmt_time(ours and ours["median"])]
            for b in baselines:
                base = impls.get(b)
                if base is None:
                    row.append("—")
                elif ours is None:
                    row.append(fmt_time(base["median"]))
                else:
                    row.append(f"{fmt_time(base['median'])} ({fmt_ratio(base['median'] / ours['median'])})")
            if op in MEMORY_BOUND:
                row.append(gbps_cell(ours))
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    memory = memory_table(cells)
    if memory:
        lines += memory
    return lines


def gbps_cell(row: dict | None) -> str:
    if not row or not row.get("bytes_moved"):
        return "—"
    gbps = row["bytes_moved"] / row["median"] / 1e9
    copy = row.get("copy_gbps")
    return f"{gbps:.2f}" + (f" ({100 * gbps / copy:.0f}%)" if copy else "")


def memory_table(cells: dict) -> list[str]:
    full = {k: v for k, v in cells.items() if k[0] == "full" and any("peak_mem_bytes" in r for r in v.values())}
    if not full:
        return []
    names = sorted({i for impls in full.values() for i in impls}, key=lambda n: (not n.startswith("fastfvae"), n))
    has_rss = any("peak_rss_bytes" in r for impls in full.values() for r in impls.values())
    lines = ["Peak memory of one full pass (above its inputs)" + (": torch allocator / process RSS" if has_rss else "")
             + ":", "", "| B×D | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for (direction, batch, dim) in sorted(full, key=lambda k: (k[1], k[2])):
        impls = full[(direction, batch, dim)]
        cells_out = []
        for n in names:
            r = impls.get(n)
            if r is None:
                cells_out.append("—")
            elif has_rss:
                cells_out.append(f"{fmt_bytes(r.get('peak_mem_bytes'))} / {fmt_bytes(r.get('peak_rss_bytes'))}")
            else:
                cells_out.append(fmt_bytes(r.get("peak_mem_bytes")))
        lines.append(f"| {batch}×{dim} | " + " | ".join(cells_out) + " |")
    lines.append("")
    return lines


def train_step_lines(rows: list[dict]) -> list[str]:
    steps = [r for r in rows if r["op"] == "train_step"]
    if not steps:
        return []
    lines = ["Training throughput (steps/s = 1 / median step time):", ""]
    for r in sorted(steps, key=lambda r: (r["device"], r["B"], r["impl"])):
        lines.append(f"- {r['device']} B={r['B']}: {r['impl']} {1 / r['median']:.2f} steps/s")
    return lines + [""]


def target_rows(rows: list[dict], comps: list[dict]) -> list[list[str]]:
    """The targets (the large-B loss head and permute_dims against argsort; the whole step and
    the data path; log_qz). The B=64 loss-head 5x and permute 5x targets
    are retired (the Python autograd-node floor, bench/head_floor.py); their rows stay in the tables."""
    out = []

    def ratio_check(label, needed, matches, strict=False):
        if not matches:
            out.append([label, "not measured in this run", "NOT met (no data)"])
            return
        for c in matches:
            out.append([f"{label} — {c['fastfvae']}",
                        f"{c['ratio']:.2f}× (min-time ratio {c['min_ratio']:.2f}×): {fmt_time(c['t_fastfvae'])} vs "
                        f"{fmt_time(c['t_baseline'])}", status(c, needed, strict)])

    def interleaved_check(label, needed, op, device, prefix, baseline):
        """A target read off an interleaved row (the implementations' calls in turn, in one
        process): every fastfvae implementation whose name starts with ``prefix`` against ``baseline``."""
        row = next((r for r in rows if r["op"] == op and r["device"] == device), None)
        times = (row or {}).get("interleaved") or {}
        mine = [name for name in times if name.startswith(prefix)]
        if not mine or baseline not in times:
            out.append([label, "not measured in this run", "NOT met (no data)"])
            return
        theirs = times[baseline]
        for name in mine:
            ours = times[name]
            c = {"ratio": theirs["median"] / ours["median"], "min_ratio": theirs["min"] / ours["min"]}
            out.append([label if name in label else f"{label} — {name}",
                        f"{c['ratio']:.2f}× (min-time ratio {c['min_ratio']:.2f}×): {fmt_time(ours['median'])} vs "
                        f"{fmt_time(theirs['median'])}, {ours['calls']} calls each", status(c, needed)])

    # The loss head at B=16384, D=64 (interleaved calls: bench/test_loss_head.py's test_loss_head_interleaved).
    interleaved_check("loss head fwd+bwd ≥ 3× 1Konny eager at B=16384, D=64 (cpu, interleaved calls)", 3.0,
                      "loss_head_interleaved", "cpu", "fastfvae[", "eager-1konny")
    interleaved_check("loss head fwd+bwd ≥ 5× the compiled reference at B=16384, D=64 (cpu, interleaved calls)",
                      5.0, "loss_head_interleaved", "cpu", "fastfvae[", "compiled-reference")
    argsort = find(comps, op="permute_dims", device="cpu", direction="forward", baseline="argsort-gather")
    if not argsort:
        out.append(["permute_dims faster than argsort+gather at every size (cpu, forward)", "not measured",
                    "NOT met (no data)"])
    for name in sorted({c["fastfvae"] for c in argsort}):
        mine = sorted((c for c in argsort if c["fastfvae"] == name), key=lambda c: (c["B"], c["D"]))
        losing = [c for c in mine if c["ratio"] <= 1]
        losing_min = [c for c in mine if c["min_ratio"] <= 1]
        figures = ", ".join(f"{c['B']}×{c['D']}: {c['ratio']:.2f}× (min {c['min_ratio']:.2f}×)" for c in mine)
        if not losing:
            verdict = "met" + (" (by median; by min time not at " + ", ".join(f"{c['B']}×{c['D']}" for c in losing_min)
                               + ")" if losing_min else "")
        else:
            verdict = "**NOT met** at " + ", ".join(f"{c['B']}×{c['D']}" for c in losing) + " (by median)"
            if not losing_min:
                verdict += "; met by min time (a noisy run)"
        out.append([f"permute_dims faster than argsort+gather at every size (cpu, forward) — {name}", figures, verdict])
    # The whole step (interleaved calls) and the data path.
    for device, mode, needed in (("cpu", "fastfvae[eager]", 1.5), ("cuda", "fastfvae[graph]", 5.0)):
        interleaved_check(f"whole step ≥ {needed:g}× the 1Konny loop at B=64 ({device}, {mode}, interleaved calls)",
                          needed, "step_interleaved", device, mode, "loop-1konny")
    for batch in sorted({c["B"] for c in find(comps, op="data", device="cpu")}):
        ratio_check(f"a gather_images batch ≥ 10× rendering it at B={batch} (cpu)", 10.0,
                    find(comps, op="data", device="cpu", B=batch, baseline="render-procedural"))
    for device in ("cpu", "cuda"):  # the colour sets' uint8 table (bench/test_gather_color_images.py)
        for batch in sorted({c["B"] for c in find(comps, op="color_data", device=device)}):
            ratio_check(f"a gather_color_images batch ≥ 10× indexing a float table on the CPU at B={batch} ({device})",
                        10.0, find(comps, op="color_data", device=device, B=batch, baseline="index-float-cpu"))
    # log_qz at B=2048, D=10 on the CPU, forward + backward.
    lq = find(comps, op="log_qz", device="cpu", direction="full", B=2048, D=10, baseline="eager-reference-materialised")
    ratio_check("log_qz fwd+bwd ≥ 3× the materialised reference at B=2048, D=10 (cpu)", 3.0, lq)
    full_rows = {(r["impl"]): r for r in rows
                 if r["op"] == "log_qz" and r["device"] == "cpu" and r["direction"] == "full" and r["B"] == 2048}
    ref = full_rows.get("eager-reference-materialised")
    for name, r in sorted(full_rows.items()):
        if r["role"] != "fastfvae" or ref is None:
            continue
        for key, what in (("peak_mem_bytes", "torch allocator"), ("peak_rss_bytes", "process RSS")):
            if r.get(key) and ref.get(key):
                factor = ref[key] / r[key]
                out.append([f"log_qz peak memory ≥ 50× less than the reference at B=2048, D=10 (cpu, {what}) — {name}",
                            f"{factor:.0f}× ({fmt_bytes(r[key])} vs {fmt_bytes(ref[key])})",
                            "met" if factor >= 50 else "**NOT met**"])
    return out


def status(c: dict, needed: float, strict: bool = False) -> str:
    """met / NOT met by the median ratio; says so when the min-time ratio disagrees (noise)."""
    def ok(ratio):
        return ratio > needed if strict else ratio >= needed
    if ok(c["ratio"]):
        return "met" if ok(c["min_ratio"]) else "met by median (not by min time)"
    return "**NOT met**" if not ok(c["min_ratio"]) else "**NOT met** by median (met by min time: a noisy run)"


def slower_lines(comps: list[dict]) -> list[str]:
    slow = sorted((c for c in comps if c["ratio"] < 1),
                  key=lambda c: (c["device"], c["op"], DIRECTION_ORDER.get(c["direction"], 9), c["B"], c["D"]))
    if not slow:
        return ["fastfvae was not slower than any baseline in any measured group of this run.", ""]
    lines = [f"{len(slow)} comparisons where fastfvae's median is slower than a baseline's:", ""]
    for c in slow:
        lines.append(f"- {c['op']} {c['direction']} B={c['B']} D={c['D']} {c['device']}: {c['fastfvae']} "
                     f"{fmt_time(c['t_fastfvae'])} vs {c['baseline']} {fmt_time(c['t_baseline'])} → "
                     f"{c['ratio']:.2f}× (min-time ratio {c['min_ratio']:.2f}×)")
    return lines + [""]


# --------------------------------------------------------------------------------------------- roofline
def roofline_lines(record: dict) -> list[str]:
    """One bench/roofline.py record: the machine's rates, then op x direction x size: time,
    floor and floor / time (100 % = the machine's limit for that work)."""
    r = record["roofline"]
    rates = r["rates"]
    one_thread = ""
    if rates.get("normals_per_s_1thread"):
        one_thread = (f" (one thread: {rates['normals_per_s_1thread'] / 1e6:.0f} M/s, "
                      f"{rates['uniforms_per_s_1thread'] / 1e6:.0f} M/s)")
    lines = [f"### Roofline ({r['device']}: {r['gpu'] or r['machine']}, {r['threads']} threads)", "",
             f"Measured {r['datetime']}, torch {r['torch']}, load average (1 min) {r['load_average'][0]:.2f} → "
             f"{r['load_average'][1]:.2f}; {r['rounds']} interleaved rounds per case, fresh inputs each; "
             + ("times are the calling thread's CPU time (a loaded machine: wall times were mostly other "
                "processes' time slices)" if r.get("clock") == "thread" else "wall-clock times")
             + ". Rates (the faster of the measurements before and after the ops):", "",
             f"- memory: copy {rates['copy_gbps']:.1f} GB/s, add {rates['add_gbps']:.1f} GB/s (bytes read + "
             "written; the floor uses the faster)",
             f"- Philox normals {rates['normals_per_s'] / 1e6:.0f} M/s, uniforms {rates['uniforms_per_s'] / 1e6:.0f} M/s"
             + one_thread,
             f"- FMA {rates['fma_per_s'] / 1e9:.1f} G/s; exp {rates['exp_per_s'] / 1e9:.2f} G/s (cpu_math's, with "
             "range handling: reported, not used: floors count an exp as 12 FMAs)"]
    if rates.get("call_floor_us"):
        lines.append("- per-call floors: " + ", ".join(f"{name.replace('_', ' ')} {us:.2f} µs"
                                                       for name, us in rates["call_floor_us"].items()))
    lines += ["", "floor = bytes / bandwidth + draws / draw rate + (FMAs + 12 · exps) / FMA rate "
              "(docs/DESIGN.md §14 per op); % of floor = floor / time.", "",
              "| op | direction | B×D | median | min | floor | % of floor (median / min) |",
              "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        op = row["op"] + (f" ({row['variant']})" if row["variant"] else "")
        lines.append(f"| {op} | {row['direction']} | {row['B']}×{row['D']} | {fmt_time(row['median_s'])} | "
                     f"{fmt_time(row['min_s'])} | {fmt_time(row['floor_s'])} | "
                     f"{row['pct_of_floor_median']:.0f} % / {row['pct_of_floor_min']:.0f} % |")
    return lines + [""]


def render(meta: dict, rows: list[dict], targets_only: bool = False) -> str:
    if not rows:  # roofline files only
        return "\n".join(line for record in meta.get("rooflines", []) for line in roofline_lines(record)) + "\n"
    comps = comparisons(rows)
    groups = by_group(rows)
    lines = ["## fastfvae benchmark results", ""] + header(meta, rows) + [""]
    lines += ["### Targets", "", "| target | measured | status |", "|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in target_rows(rows, comps)]
    lines.append("")
    if targets_only:
        return "\n".join(lines) + "\n"
    lines += train_step_lines(rows)
    ops = sorted(groups, key=lambda k: (k[1], OP_ORDER.index(k[0]) if k[0] in OP_ORDER else 99, k[0]))
    for op, device in ops:
        if op in TARGET_ONLY:
            continue
        lines += op_table(op, device, groups[(op, device)])
    lines += ["### Where fastfvae is slower than a baseline", ""] + slower_lines(comps)
    for record in meta.get("rooflines", []):
        lines += roofline_lines(record)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", help="pytest-benchmark JSON file(s) (--benchmark-json) and/or "
                                                "bench/roofline.py JSON file(s) (--json)")
    parser.add_argument("--output", "-o", help="write the markdown here instead of stdout")
    parser.add_argument("--targets-only", action="store_true", help="only the header and the targets")
    args = parser.parse_args(argv)
    meta, rows = load(args.json)
    if not rows and not meta["rooflines"]:
        print(f"report: no fastfvae benchmark rows in {', '.join(args.json)}", file=sys.stderr)
        return 1
    text = render(meta, rows, targets_only=args.targets_only)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
