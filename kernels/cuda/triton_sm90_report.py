"""Registers and spills of the Triton log_qz kernels compiled for sm_90, without a GPU.

Triton 3.6 lowers a kernel to PTX (target sm_90a) through its full pipeline with triton.compile(ASTSource,
target=GPUTarget("cuda", 90, 32)); its bundled ptxas then reports registers and spills (the
numbers a GPU's compiled metadata, n_regs / n_spills, would show). Shapes: the launcher's tiles
(log_qz._blocks) for M = K = 1024 at several D, num_warps 4 (the launcher's default).
Run: python kernels/cuda/triton_sm90_report.py [NUM_WARPS ...]   (prints a markdown table; figures in REVIEW.md)
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fastfvae.backends.triton import log_qz

PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


def compile_ptx(kernel, float_pointer: str, constexprs: dict, num_warps: int = 4) -> str:
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = float_pointer
        else:
            signature[name] = "i32"
    compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps})
    return compiled.asm["ptx"]


def ptxas_usage(ptx: str) -> tuple[int, int, int]:
    """(registers, spill stores, spill loads) from ptxas -v."""
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "k.ptx"
        source.write_text(ptx)
        out = subprocess.run([str(PTXAS), "-v", "--gpu-name", "sm_90a", str(source), "-o", str(Path(folder) / "k.o")],
                             capture_output=True, text=True, check=True).stderr
    regs = int(re.search(r"Used (\d+) registers", out).group(1))
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    return regs, int(spills.group(1)), int(spills.group(2))


def main() -> None:
    kernels = {"forward": log_qz._log_qz_forward_kernel, "backward z": log_qz._log_qz_backward_z_kernel,
               "backward components": log_qz._log_qz_backward_components_kernel}
    warps = [int(w) for w in sys.argv[1:]] or [4]
    print("| kernel | dtype | D | BLOCK_M x BLOCK_K x BLOCK_D | num_warps | registers | spill stores/loads (B) |")
    print("|---|---|---|---|---|---|---|")
    for name, kernel in kernels.items():
        for dtype, pointer, compute in (("float32", "*fp32", tl.float32), ("float64", "*fp64", tl.float64)):
            for dim in (10, 64, log_qz.MAX_BLOCK_D):
                block_m, block_k, block_d = log_qz._blocks(1024, 1024, dim)
                constexprs = dict(MSS=False, COMPUTE=compute, BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_D=block_d)
                for num_warps in warps:
                    regs, stores, loads = ptxas_usage(compile_ptx(kernel, pointer, constexprs, num_warps))
                    print(f"| {name} | {dtype} | {dim} | {block_m} x {block_k} x {block_d} | {num_warps} | {regs} "
                          f"| {stores}/{loads} |")


if __name__ == "__main__":
    main()
