"""Compact table of ptxas -v resource usage (registers, stack frame, spills) per kernel.

Usage: nvcc -arch=sm_90 -Xptxas -v ... 2> ptxas.txt; python kernels/cuda/ptxas_report.py ptxas.txt
Names are demangled with c++filt and shortened to the kernel and its template arguments; the
figures recorded in kernels/cuda/REVIEW.md come from this. No GPU needed.
"""
from __future__ import annotations

import re
import subprocess
import sys


def demangle(names: list[str]) -> list[str]:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
        return out.stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return names


def short(name: str) -> str:
    """'void ffv::gpu::(anonymous namespace)::k<float, 16>(long, ...)' -> 'k<float, 16>'."""
    name = re.sub(r"^void |ffv::gpu::|\(anonymous namespace\)::", "", name)
    head = name.split("(", 1)[0]
    name = name[: name.index(">(") + 1] if "<" in head else head
    return name.replace("__nv_bfloat16", "bf16").replace("__half", "f16")


def rows(text: str):
    current = None
    for line in text.splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            current = {"name": m.group(1)}
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current["stack"], current["spill_st"], current["spill_ld"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m and "stack" in current:
            current["regs"] = int(m.group(1))
            yield current
            current = None


def main(path: str) -> None:
    found = list(rows(open(path).read()))
    names = demangle([r["name"] for r in found])
    print("| kernel | registers | stack frame (B) | spill stores/loads (B) |")
    print("|---|---|---|---|")
    for r, name in sorted(zip(found, names), key=lambda x: short(x[1])):
        print(f"| {short(name)} | {r['regs']} | {r['stack']} | {r['spill_st']}/{r['spill_ld']} |")


if __name__ == "__main__":
    main(sys.argv[1])
