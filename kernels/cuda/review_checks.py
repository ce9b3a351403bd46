"""The GPU-only checks of kernels/cuda/REVIEW.md, run by bench/gpu_check.sh's "review" stage.

Each check prints one line "check <name>: PASS|FAIL|SKIP <detail>"; the exit status is 1 when
any check FAILs. Without a CUDA device every check SKIPs (exit 0), so the script runs anywhere.
Run: python kernels/cuda/review_checks.py
"""
from __future__ import annotations

import ctypes
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
    """GPU readiness item 2 (REVIEW.md): the library must not need libcudart.so at load (static runtime)."""
    native, library = _cuda_library()
    needed = subprocess.run(["ldd", str(library.path)], capture_output=True, text=True).stdout
    shared = [line.split()[0] for line in needed.splitlines() if "libcudart" in line]
    report(name, "FAIL" if shared else "PASS", f"ldd lists {shared or 'no libcudart'}")


def check_stale_error_cleared(name):
    """GPU readiness items 3 and 6 (REVIEW.md): the library no longer allocates (ABI 3: workspaces come from
    torch.empty in the launcher), so a huge MEAN call (B = 2^36 rows, stride-0 inputs: z is 256 GiB,
    the per-row KL workspace 512 GiB) must fail in torch's allocator with torch.OutOfMemoryError (torch
    frees its cache first), leave no CUDA error behind, and the next native op and torch op
    must run clean. (check_call's cudaGetLastError now guards CUB's calls only.)"""
    native, library = _cuda_library()
    seed = torch.tensor([1], dtype=torch.int64, device="cuda")
    huge = torch.zeros(1, 1, device="cuda").expand(2**36, 1)
    query = ctypes.c_int64(0)
    library.functions["ffv_reparameterize_kl_workspace_bytes"](0, 2**36, 1, 1, ctypes.byref(query))
    try:
        native.reparameterize_kl_forward(huge, huge, None, seed, "mean")
        raised = "nothing"
    except torch.OutOfMemoryError as error:
        raised = f"torch.OutOfMemoryError ({str(error)[:60]!r})"
    except Exception as error:  # noqa: BLE001 - reported
        raised = f"{type(error).__name__} ({str(error)[:60]!r})"
    mu = torch.zeros(1, 1, device="cuda")
    z, kl = native.reparameterize_kl_forward(mu, mu, None, seed, "mean")  # raises if an error is stale
    (torch.ones(3, device="cuda") * 2).sum().item()  # and torch's next launch is clean
    torch.cuda.synchronize()
    ok = raised.startswith("torch.OutOfMemoryError") and query.value >= 8 * 2**36
    report(name, "PASS" if ok else "FAIL",
           f"query {query.value} B; huge call -> {raised}; next op and torch ran clean")


def check_log_qz_local_memory(name):
    """GPU readiness item 4 (REVIEW.md): the first native log_qz launch at D = 10 must not make the driver
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
    """GPU readiness item 8 (REVIEW.md): CUDA and Triton draw the same eps bit for bit (same Philox, same
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
    """GPU readiness item 7 (REVIEW.md): G > 65535 groups must give a clear error or a correct result, never
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


def check_two_stage_reductions(name):
    """GPU readiness items 5 and 6 (REVIEW.md): tc_loss, discriminator_loss and the MEAN KL above 16384 rows run
    two stages in a torch-allocated workspace: equal to float64 torch within float32 rounding,
    bitwise equal over 3 runs, on both sides of the threshold."""
    import torch.nn.functional as F

    native, _ = _cuda_library()
    seed = torch.tensor([3], dtype=torch.int64, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    details, ok = [], True
    for batch in (16384, 16385, 1_000_003):
        logits = torch.randn(batch, 2, device="cuda", generator=g)
        perm = torch.randn(batch, 2, device="cuda", generator=g)
        mu = torch.randn(batch, 10, device="cuda", generator=g)
        got = {
            "tc": [native.tc_loss_forward(logits) for _ in range(3)],
            "disc": [native.discriminator_loss_forward(logits, perm) for _ in range(3)],
            "kl": [native.reparameterize_kl_forward(mu, mu, None, seed, "mean")[1] for _ in range(3)],
        }
        d, p, m = logits.double(), perm.double(), mu.double()
        want = {
            "tc": (d[:, 0] - d[:, 1]).mean(),
            "disc": 0.5 * (F.cross_entropy(d, torch.zeros(batch, dtype=torch.long, device="cuda"))
                           + F.cross_entropy(p, torch.ones(batch, dtype=torch.long, device="cuda"))),
            "kl": (0.5 * (m * m + m.exp() - m - 1).sum(1)).mean(),
        }
        for key, runs in got.items():
            same = all(torch.equal(r, runs[0]) for r in runs)
            err = abs(runs[0].double().item() - want[key].item())
            close = err <= 1e-5 * max(1.0, abs(want[key].item())) + 1e-6
            ok &= same and close
            details.append(f"{key}@{batch}: {'=' if same else '!='} err {err:.1e}")
    report(name, "PASS" if ok else "FAIL", "; ".join(details))


def check_permute_fallback_workspace(name):
    """GPU readiness item 6 (REVIEW.md): permute_dims above 4096 rows (CUB fallback) in a torch-allocated
    workspace (keys, offsets, CUB temp): index equals reference.philox_permutation exactly, out
    is the gather, on both sides of the 4096-row limit."""
    from fastfvae.reference import philox_permutation

    native, library = _cuda_library()
    details, ok = [], True
    for groups, batch, dim in ((1, 4096, 3), (2, 4097, 3), (1, 16384, 10)):
        seed = torch.tensor([7 + batch], dtype=torch.int64, device="cuda")
        z = torch.randn(groups, batch, dim, device="cuda")
        query = ctypes.c_int64(-1)
        library.functions["ffv_permute_dims_workspace_bytes"](0, groups, batch, dim, ctypes.byref(query))
        out, index = native.permute_dims_forward(z, seed, True)
        expected = philox_permutation(seed, groups, batch, dim)
        good = torch.equal(index.long(), expected) and torch.equal(out, torch.gather(z, 1, expected))
        ok &= good and (query.value == 0) == (batch <= 4096)
        details.append(f"B={batch}: workspace {query.value} B, {'exact' if good else 'MISMATCH'}")
    report(name, "PASS" if ok else "FAIL", "; ".join(details))


def main() -> int:
    if not torch.cuda.is_available():
        print("check all: SKIP no CUDA device")
        return 0
    for function in (check_static_runtime, check_stale_error_cleared, check_log_qz_local_memory,
                     check_eps_bit_identity, check_triton_grid_limits, check_determinism, check_two_stage_reductions,
                     check_permute_fallback_workspace):
        check(function)
    failed = [r for r in RESULTS if r[1] == "FAIL"]
    print(f"review checks: {len(RESULTS) - len(failed)} of {len(RESULTS)} without failure")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
