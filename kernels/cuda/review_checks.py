"""The GPU-only checks of kernels/cuda/REVIEW.md, run by bench/gpu_check.sh's "review" stage.

Each check prints one line "check <name>: PASS|FAIL|SKIP <detail>"; the exit status is 1 when
any check FAILs. Without a CUDA device every check SKIPs (exit 0), so the script runs anywhere.
Run: python kernels/cuda/review_checks.py
"""
from __future__ import annotations

import subprocess
import sys
import traceback

import torch

RESULTS: list[tuple[str, str, str]] = []


def report(name: str, status: str, detail: str) -> None:
    RESULTS.append((name, status, detail))
    print(f"check {name}: {status} {detail}", flush=True)


def check(function):
    """Run one check; an exception is a FAIL with its message, never a crash of the script."""
    name = function.__name__.removeprefix("check_")
    try:
        function(name)
    except Exception as error:  # noqa: BLE001 - every failure becomes a line of the report
        report(name, "FAIL", f"{type(error).__name__}: {error}")
        traceback.print_exc()
    return function


def _cuda_library():
    from fastfvae.backends import native

    library, reason = native.load("cuda")
    if library is None:
        raise RuntimeError(f"libfastfvae_cuda not loaded: {reason}")
    return native, library


def check_static_runtime(name):
    """Issue 16 item 2: the library must not need libcudart.so at load (static runtime)."""
    native, library = _cuda_library()
    needed = subprocess.run(["ldd", str(library.path)], capture_output=True, text=True).stdout
    shared = [line.split()[0] for line in needed.splitlines() if "libcudart" in line]
    report(name, "FAIL" if shared else "PASS", f"ldd lists {shared or 'no libcudart'}")


def check_stale_error_cleared(name):
    """Issue 16 item 3: after a failed runtime call (an OOM in cudaMallocAsync: the MEAN
    workspace of B = 2^36 rows, 512 GiB), the next op must succeed, and so must torch."""
    native, library = _cuda_library()
    x = torch.zeros(4, device="cuda")
    seed = torch.tensor([1], dtype=torch.int64, device="cuda")
    forward = library.functions["ffv_reparameterize_kl_forward"]
    stream = torch.cuda.current_stream().cuda_stream
    ptr = x.data_ptr()
    status = forward(0, 2**36, 1, ptr, 1, 0, ptr, 1, 0, None, 0, 0, seed.data_ptr(), 1, ptr, ptr, stream)
    first = library.last_error()
    mu = torch.zeros(1, 1, device="cuda")
    z, kl = native.reparameterize_kl_forward(mu, mu, None, seed, "mean")  # raises if the error is stale
    (torch.ones(3, device="cuda") * 2).sum().item()  # and torch's next launch is clean
    torch.cuda.synchronize()
    ok = status == 3
    report(name, "PASS" if ok else "FAIL", f"OOM call -> status {status} ({first[:80]!r}); next op and torch ran clean")


def check_log_qz_local_memory(name):
    """Issue 16 item 4: the first native log_qz launch at D = 10 must not make the driver
    reserve GiBs of local memory (before the D buckets: 3-10 KiB of stack per thread)."""
    native, _ = _cuda_library()
    torch.cuda.synchronize()
    free_before, _ = torch.cuda.mem_get_info()
    g = torch.Generator(device="cuda").manual_seed(0)
    z = torch.randn(1024, 10, device="cuda", generator=g)
    mu = torch.randn(1024, 10, device="cuda", generator=g)
    lv = torch.randn(1024, 10, device="cuda", generator=g)
    native.log_qz_forward(z, mu, lv, 1000, "mws")
    torch.cuda.synchronize()
    free_after, _ = torch.cuda.mem_get_info()
    used_mib = (free_before - free_after) / 2**20
    report(name, "PASS" if used_mib < 256 else "FAIL", f"free device memory dropped by {used_mib:.0f} MiB (inputs ~0.1 MiB)")


def check_eps_bit_identity(name):
    """Issue 16 item 8: CUDA and Triton draw the same eps bit for bit (same Philox, same
    Box-Muller, the same approximate sqrt)."""
    from fastfvae.backends import native, triton as triton_backend

    reason = triton_backend.why_not("reparameterize_kl", torch.device("cuda"), torch.float32)
    if reason:
        report(name, "SKIP", reason)
        return
    zeros = torch.zeros(4096, 32, device="cuda")
    seed = torch.tensor([987654321], dtype=torch.int64, device="cuda")
    a, _ = native.reparameterize_kl_forward(zeros, zeros, None, seed, "none")
    b, _ = triton_backend.reparameterize_kl_forward(zeros, zeros, None, seed, "none")
    differ = (a.view(torch.int32) != b.view(torch.int32)).sum().item()
    ulps = (a.view(torch.int32) - b.view(torch.int32)).abs().max().item()
    report(name, "PASS" if differ == 0 else "FAIL", f"{differ} of {a.numel()} eps differ (max {ulps} ulp)")


def check_triton_grid_limits(name):
    """Issue 16 item 7: G > 65535 groups must give a clear error or a correct result, never
    CUDA's 'invalid argument'."""
    import fastfvae

    z = torch.randn(70000, 2, 1, device="cuda")
    try:
        out = fastfvae.permute_dims(z, backend="triton")
        torch.cuda.synchronize()
        ok = torch.equal(out.sort(dim=1).values, z.sort(dim=1).values)
        report(name, "PASS" if ok else "FAIL", "G = 70000 served" + ("" if ok else " WRONGLY"))
    except ValueError as error:
        report(name, "PASS", f"clear error: {error}")


def check_determinism(name):
    """REVIEW.md item 3: repeated MEAN/SUM reductions are bitwise equal (both CUDA paths)."""
    native, _ = _cuda_library()
    seed = torch.tensor([5], dtype=torch.int64, device="cuda")
    worst = []
    for batch, dim in ((64, 10), (100000, 10)):
        mu = torch.randn(batch, dim, device="cuda")
        runs = [native.reparameterize_kl_forward(mu, mu, None, seed, "mean")[1] for _ in range(5)]
        logits = torch.randn(batch, 2, device="cuda")
        tcs = [native.tc_loss_forward(logits) for _ in range(5)]
        worst.append(all(torch.equal(r, runs[0]) for r in runs) and all(torch.equal(t, tcs[0]) for t in tcs))
    report(name, "PASS" if all(worst) else "FAIL", f"bitwise equal over 5 runs at B = 64 and 100000: {worst}")


def main() -> int:
    if not torch.cuda.is_available():
        print("check all: SKIP no CUDA device")
        return 0
    for function in (check_static_runtime, check_stale_error_cleared, check_log_qz_local_memory,
                     check_eps_bit_identity, check_triton_grid_limits, check_determinism):
        check(function)
    failed = [r for r in RESULTS if r[1] == "FAIL"]
    print(f"review checks: {len(RESULTS) - len(failed)} of {len(RESULTS)} without failure")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
