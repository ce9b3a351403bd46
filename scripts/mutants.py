#!/usr/bin/env python3
"""Planted bugs (mutation testing): does the test suite catch realistic one-line mistakes?

Each mutant is a small patch (a file, an exact text that must occur in it once, its replacement)
and the few tests that must catch it. For each mutant the script applies the patch, rebuilds
what the patch needs (the CPU library when a C++ source changes: ``Library``; the installed
library is left alone), runs those tests and restores the file (always: on success, failure, Ctrl-C or
SIGTERM; a run killed outright leaves build/mutants/pending.json, which the next run restores
first). A mutant is CAUGHT when its tests fail, SURVIVED when they pass, and an ERROR when it
could not be judged: its target text is missing or not unique (the code moved: update the
mutant), the mutated library does not build, or pytest could not run the selection.

Run it before a release, not in CI (it rebuilds the library and takes a while):

    .venv/bin/python scripts/mutants.py              # every mutant, then the score table
    .venv/bin/python scripts/mutants.py --check      # only: does every patch still apply? (seconds)
    .venv/bin/python scripts/mutants.py -k log_qz    # the mutants whose name contains "log_qz"
    .venv/bin/python scripts/mutants.py --list

By default the tests of every selection are first run on the unmodified code (a selection that
fails there would "catch" every mutant); --no-baseline skips that. Exit status 0 when every
mutant was caught, 1 otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PENDING = ROOT / "build" / "mutants" / "pending.json"  # {path: original text} while a patch is applied
NATIVE_SUFFIXES = (".cpp", ".h")  # sources of the CPU library (CUDA mutants would need a GPU)
MUTANT_LIB = ROOT / "build" / "mutants" / "lib"  # the mutated CPU library, loaded by the tests
TRITON_ENV = {"TRITON_INTERPRET": "1"}  # Triton kernels run on the CPU under the interpreter


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str           # area.what: unique, used by -k
    path: str           # file, relative to the repository root
    old: str            # exact text, must occur exactly once in the file
    new: str            # its replacement
    tests: tuple        # pytest arguments: files / node ids, "-k" expressions
    bug: str            # the mistake it plants, in words
    env: tuple = ()     # extra environment (key, value) pairs for the tests

    @property
    def native(self) -> bool:
        return self.path.endswith(NATIVE_SUFFIXES)


def _k(files, expression):
    """A test selection: files (str or tuple) filtered by a pytest -k expression."""
    files = (files,) if isinstance(files, str) else tuple(files)
    return files + ("-k", expression)


MUTANTS = (
    # ----------------------------------------------------------------- CPU kernels (C++)
    Mutant("cpu.log_qz.no_max_shift", "kernels/cpu/log_qz.cpp",
           "const C new_max = tile_max > max ? tile_max : max;", "const C new_max = C(0);",
           _k("tests/test_log_qz.py", "native and cpu and far_outside"),
           "log-sum-exp without its max shift: exp underflows/overflows beyond +-88"),
    Mutant("cpu.log_qz.one_pass_without_fallback", "kernels/cpu/log_qz.cpp",
           "sum >= kMinOnePassSum ? bound[d] + std::log(sum)", "sum > 0.0f ? bound[d] + std::log(sum)",
           _k("tests/test_log_qz.py", "native and cpu and (far_outside or far_away)"),
           "one-pass logsumexp kept where its sum is made of terms clamped at e^-87.33"),
    Mutant("cpu.log_qz.grad_z_sign", "kernels/cpu/log_qz.cpp",
           "gz[r * D + d] -= gz_sum;", "gz[r * D + d] += gz_sum;",
           _k("tests/test_log_qz.py", "native and cpu and matches_reference"),
           "wrong sign of grad z"),
    Mutant("cpu.log_qz.partner_off_by_one", "kernels/cpu/log_qz.cpp",
           "const int64_t partner = K > 1 ? (i + 1) % K : -1;",
           "const int64_t partner = K > 1 ? (i + K - 1) % K : -1;",
           _k("tests/test_log_qz.py", "native and cpu and matches_reference"),
           "MSS partner component i-1 instead of i+1"),
    Mutant("cpu.dip_penalty.lower_triangle", "kernels/cpu/dip_penalty.cpp",
           "const double gram = total.gram[std::min(j, k) * ld + std::max(j, k)];",
           "const double gram = total.gram[j * ld + k];",
           _k("tests/test_dip_penalty_paths.py", "native"),
           "Gram read below the diagonal, where only the upper triangle's tiles summed"),
    Mutant("cpu.dip_penalty.first_slab_only", "kernels/cpu/dip_penalty.cpp",
           "for (int64_t slab = 1; slab < slabs; ++slab) {", "for (int64_t slab = slabs; slab < slabs; ++slab) {",
           _k("tests/test_dip_penalty_paths.py", "native"),
           "slab partials beyond the first dropped (batches over 1024 rows)"),
    Mutant("cpu.tc_loss.sign", "kernels/cpu/tc_loss.cpp",
           "return static_cast<double>(K == 2 ? first - E::load(logits + i * s0 + s1) : first);",
           "return static_cast<double>(K == 2 ? E::load(logits + i * s0 + s1) - first : first);",
           _k("tests/test_tc_loss.py", "native and cpu"),
           "TC as l1 - l0 (wrong sign of the density-ratio estimate)"),
    Mutant("cpu.discriminator_loss.swapped_labels", "kernels/cpu/discriminator_loss.cpp",
           "const float* picked = target == 0 ? a : b;", "const float* picked = target == 1 ? a : b;",
           _k("tests/test_discriminator_loss.py", "native and cpu"),
           "swapped labels: real codes scored as class 1, permuted as class 0 (float32 path)"),
    Mutant("cpu.discriminator_loss.grad_scale", "kernels/cpu/discriminator_loss.cpp",
           "const C scale = E::load(static_cast<const T*>(grad_loss)) * C(0.5) / static_cast<C>(B);",
           "const C scale = E::load(static_cast<const T*>(grad_loss)) / static_cast<C>(B);",
           _k("tests/test_discriminator_loss.py", "native and cpu"),
           "backward without the 1/2 of the two-half average"),
    Mutant("cpu.reparameterize_kl.grad_logvar_half", "kernels/cpu/reparameterize_kl.cpp",
           "E::store(grad_logvar + k, C(0.5) * gz * std_dev * eps_at(k) + C(0.5) * gkl * (std_dev * std_dev - C(1)));",
           "E::store(grad_logvar + k, gz * std_dev * eps_at(k) + C(0.5) * gkl * (std_dev * std_dev - C(1)));",
           _k("tests/test_reparameterize_kl.py", "native and cpu"),
           "d z / d logvar without the 1/2 of std = exp(logvar / 2)"),
    Mutant("cpu.reparameterize_kl.kl_minus_one", "kernels/cpu/reparameterize_kl.cpp",
           "row += m * m + std_dev * std_dev - lv - C(1);", "row += m * m + std_dev * std_dev - lv;",
           _k("tests/test_reparameterize_kl.py", "native and cpu"),
           "KL term without its -1 (strided path)"),
    Mutant("cpu.permute_dims.counter", "kernels/cpu/permute_dims.cpp",
           "ffv::simd::philox_c0c1(seed, static_cast<uint64_t>(g * B * D + d), static_cast<uint64_t>(D), B, c0, c1);",
           "ffv::simd::philox_c0c1(seed, static_cast<uint64_t>(g * B * D + d), static_cast<uint64_t>(1), B, c0, c1);",
           _k("tests/test_permute_dims.py", "native and cpu"),
           "Philox counters with stride 1 instead of D (columns share random numbers)"),
    Mutant("cpu.gather_images.bound_off_by_one", "kernels/cpu/gather_images.cpp",
           "if (row < 0 || row >= N) {", "if (row < 0 || row > N) {",
           _k("tests/test_gather_images.py", "native and cpu"),
           "index N read past the table instead of giving a NaN image"),
    Mutant("cpu.gather_images.bit_order", "kernels/cpu/gather_images.cpp",
           "static_cast<float>((byte >> bit) & 1)", "static_cast<float>((byte >> (7 - bit)) & 1)",
           _k("tests/test_gather_images.py", "native and cpu"),
           "pixels unpacked most significant bit first (the table is little-endian bit order)"),
    # ----------------------------------------------------------------- Triton kernels (interpreter)
    Mutant("triton.log_qz.no_max_shift", "fastfvae/backends/triton/log_qz.py",
           "new_max = tl.maximum(max_joint, tl.max(s, axis=1))", "new_max = tl.zeros_like(max_joint)",
           _k("tests/test_log_qz.py", "triton and cpu and far_outside"),
           "log-sum-exp of the joint without its max shift", env=tuple(TRITON_ENV.items())),
    Mutant("triton.reparameterize_kl.kl_half", "fastfvae/backends/triton/reparameterize_kl.py",
           "kl_row = 0.5 * kl_row", "kl_row = kl_row",
           _k("tests/test_reparameterize_kl.py", "triton and cpu"),
           "KL without its factor 1/2", env=tuple(TRITON_ENV.items())),
    Mutant("triton.discriminator_loss.half", "fastfvae/backends/triton/discriminator_loss.py",
           "loss = 0.5 * (tl.sum(acc, axis=0) / B)", "loss = tl.sum(acc, axis=0) / B",
           _k("tests/test_discriminator_loss.py", "triton and cpu"),
           "discriminator loss as the sum of the two halves' means, not their average",
           env=tuple(TRITON_ENV.items())),
    Mutant("triton.tc_loss.grad_sign", "fastfvae/backends/triton/tc_loss.py",
           "tl.store(grad_ptr + rows * K + 1, (-column).to(grad_ptr.dtype.element_ty), mask=ok)",
           "tl.store(grad_ptr + rows * K + 1, column.to(grad_ptr.dtype.element_ty), mask=ok)",
           _k("tests/test_tc_loss.py", "triton and cpu"),
           "gradient of the second logit with the wrong sign", env=tuple(TRITON_ENV.items())),
    Mutant("triton.permute_dims.row_bits", "fastfvae/backends/triton/permute_dims.py",
           "return (1 << max(1, (batch - 1).bit_length())) - 1",
           "return (1 << max(1, batch.bit_length() - 1)) - 1",
           _k("tests/test_permute_dims.py", "triton and cpu and (each_column or (exactly_the_shared and float32))"),
           "one row bit too few for B not a power of two: rows collide, not a permutation",
           env=tuple(TRITON_ENV.items())),
    # ----------------------------------------------------------------- losses
    Mutant("losses.recon_normaliser", "fastfvae/losses.py",
           "return total / x_recon.shape[0]", "return total / x_recon.numel()",
           ("tests/test_losses.py",),
           "reconstruction averaged over pixels too, not only over the batch"),
    Mutant("losses.tcvae_tc_sign", "fastfvae/losses.py",
           "tc = (log_qz - log_prod_qzj).mean()", "tc = (log_prod_qzj - log_qz).mean()",
           _k("tests/test_losses_tcvae.py", "not compiles"),
           "beta-TCVAE's total correlation with the wrong sign"),
    Mutant("losses.dip_covariance_bessel", "fastfvae/dip_penalty.py",
           "cov = centred.T @ centred / mu.shape[0]", "cov = centred.T @ centred / (mu.shape[0] - 1)",
           _k("tests/test_losses_family.py", "dip and not gradcheck"),
           "DIP covariance divided by B - 1 (disentanglement_lib's is the population covariance)"),
    Mutant("losses.annealed_abs", "fastfvae/losses.py",
           "total = recon + self.gamma * (kl - capacity).abs()", "total = recon + self.gamma * (kl - capacity)",
           _k("tests/test_losses_family.py", "annealed and not tensor_step"),
           "AnnealedVAE without the absolute value |kl - C|"),
    # ----------------------------------------------------------------- metrics
    Mutant("metrics.mig_normaliser", "fastfvae/metrics/mig.py",
           "gaps.append((float(ordered.values[0]) - second) / h)",
           "gaps.append((float(ordered.values[0]) - second) / math.log(size))",
           _k("tests/test_metrics.py", "skewed"),
           "MIG normalised by log(factor size) instead of the factor's sample entropy"),
    Mutant("metrics.factor_vae_argmax", "fastfvae/metrics/factor_vae.py",
           "chosen.append(active_index[(local_var / scale).argmin(dim=1)].cpu())",
           "chosen.append(active_index[(local_var / scale).argmax(dim=1)].cpu())",
           _k("tests/test_metrics.py", "factor_vae"),
           "FactorVAE votes for the dimension of LARGEST normalised variance"),
    Mutant("metrics.mutual_information_marginal", "fastfvae/metrics/_discrete.py",
           "p_y = p_xy.sum(dim=1, keepdim=True)", "p_y = p_xy.sum(dim=2, keepdim=True)",
           _k("tests/test_metrics.py", "mig"),
           "the factor's marginal summed over the wrong axis"),
    Mutant("metrics.sap_gap", "fastfvae/metrics/sap.py",
           "return ordered[-1] - second", "return ordered[-1] - ordered[0]",
           _k("tests/test_metrics_battery.py", "sap_gap_on_hand"),
           "SAP gap to the smallest score instead of the second largest"),
    Mutant("metrics.dci_entropy_base", "fastfvae/metrics/dci.py",
           "return -plogp.sum(axis=1) / math.log(cols)", "return -plogp.sum(axis=1)",
           _k("tests/test_metrics_battery.py", "dci_entropies_on_hand"),
           "DCI entropy in nats, not base K (scores no longer in [0, 1])"),
    # ----------------------------------------------------------------- data
    Mutant("data.sample_factors_last_value", "fastfvae/data/base.py",
           "return (u * sizes).floor().long().clamp_max_(sizes.long() - 1)",
           "return (u * (sizes - 1)).floor().long().clamp_max_(sizes.long() - 1)",
           ("tests/test_data.py",),
           "factor sampling never draws a factor's last value"),
    Mutant("data.factors_of_index_order", "fastfvae/data/base.py",
           "for size in reversed(self.factor_sizes):\n            out.append(index % size)",
           "for size in self.factor_sizes:\n            out.append(index % size)",
           ("tests/test_data.py",),
           "grid index decoded with the factor sizes in the wrong order"),
    Mutant("data.packed_bit_order", "fastfvae/data/packed.py",
           'return np.packbits(flat, axis=1, bitorder="little")',
           'return np.packbits(flat, axis=1, bitorder="big")',
           ("tests/test_data.py", "tests/test_gather_images.py"),
           "images packed most significant bit first, unpacked little-endian"),
    # ----------------------------------------------------------------- trainer
    Mutant("train.permuted_codes_first_batch", "fastfvae/train/steps.py",
           "self.opt_vae.step()\n        z_perm = self._permuted_codes(x2)\n        perm = self.shared.run(z_perm)",
           "self.opt_vae.step()\n        z_perm = self._permuted_codes(x1)\n        perm = self.shared.run(z_perm)",
           _k("tests/test_train.py", "permuted_codes or textbook"),
           "the discriminator's permuted codes drawn from the first batch (default path)"),
    Mutant("train.permuted_codes_first_batch_autograd", "fastfvae/train/steps.py",
           "z_perm = self._permuted_codes(x2)\n        if reuse:",
           "z_perm = self._permuted_codes(x1)\n        if reuse:",
           _k("tests/test_train.py", "permuted_codes or textbook"),
           "the same on autograd's path (gamma 0, autocast, DDP)"),
    Mutant("train.shared_backward_scale", "fastfvae/train/shared_backward.py",
           "scale = ((g_real[:, 0] - g_real[:, 1]) / (g_tc[:, 0] - g_tc[:, 1])).unsqueeze(1)",
           "scale = ((g_real[:, 1] - g_real[:, 0]) / (g_tc[:, 0] - g_tc[:, 1])).unsqueeze(1)",
           _k("tests/test_train.py", "textbook"),
           "shared discriminator backward: the real half's layer gradients with the wrong sign"),
    Mutant("train.disc_adam_betas", "fastfvae/train/steps.py",
           "self.opt_d = adam(self.disc_params, config.lr_d, (0.5, 0.9))",
           "self.opt_d = adam(self.disc_params, config.lr_d, (0.9, 0.999))",
           _k("tests/test_train.py", "optimisers"),
           "the discriminator's Adam with the VAE's betas, not the paper's (0.5, 0.9)"),
    Mutant("train.second_batch_is_first", "fastfvae/train/trainer.py",
           "return (x[:b], x[b:]) if count == 2 else (x, None)",
           "return (x[:b], x[:b]) if count == 2 else (x, None)",
           _k("tests/test_train.py", "sample_batches"),
           "the trainer's second batch is the first one again"),
    Mutant("train.device_second_batch_is_first", "fastfvae/train/whole_step.py",
           "x = x.contiguous(memory_format=torch.channels_last)\n        return (x[:b], x[b:]) if self.count == 2",
           "x = x.contiguous(memory_format=torch.channels_last)\n        return (x[:b], x[:b]) if self.count == 2",
           _k("tests/test_whole_step.py", "device_batches_draw"),
           "the device-resident sampler's second batch is the first one again"),
    Mutant("train.resume_data_generator", "fastfvae/train/checkpoint.py",
           'data_generator.set_state(state["data"])', 'data_generator.get_state()',
           _k("tests/test_train.py", "resume_gives"),
           "resume restores torch's generator but not the data sampler's"),
)


# ---------------------------------------------------------------------------------------------
# Applying and restoring
# ---------------------------------------------------------------------------------------------
def read(path: str) -> str:
    return (ROOT / path).read_text()


def check_target(mutant: Mutant) -> str | None:
    """None when the patch applies (old text present exactly once), else why not."""
    if not (ROOT / mutant.path).is_file():
        return f"{mutant.path} does not exist"
    count = read(mutant.path).count(mutant.old)
    if count != 1:
        return f"target text found {count} times in {mutant.path} (expected once): update the mutant"
    return None


def restore_pending() -> None:
    """Put back the originals of a run that was killed while a patch was applied."""
    if not PENDING.exists():
        return
    for path, text in json.loads(PENDING.read_text()).items():
        print(f"mutants: restoring {path} left patched by an interrupted run")
        (ROOT / path).write_text(text)
    PENDING.unlink()


class Applied:
    """Context manager: the file patched inside, the original back on exit (any exit)."""

    def __init__(self, mutant: Mutant):
        self.mutant = mutant
        self.original = read(mutant.path)

    def __enter__(self):
        PENDING.parent.mkdir(parents=True, exist_ok=True)
        PENDING.write_text(json.dumps({self.mutant.path: self.original}))
        (ROOT / self.mutant.path).write_text(self.original.replace(self.mutant.old, self.mutant.new, 1))
        return self

    def __exit__(self, *exc):
        (ROOT / self.mutant.path).write_text(self.original)
        PENDING.unlink(missing_ok=True)
        return False


class Library:
    """The CPU library built from the mutated source, on the side: CMake rebuilds it in the build
    folder of scripts/rebuild_native.sh (incrementally, without that script's machine-wide lock
    and pip install) and the tests load it from MUTANT_LIB via $FASTFVAE_NATIVE_LIB_DIR. The
    installed library is never touched; the build folder is rebuilt from the restored sources
    at the end, so that the next rebuild_native.sh starts from them."""

    def __init__(self):
        self.stale = False

    @staticmethod
    def build_dir() -> Path:
        found = sorted((ROOT / "build").glob("*/build.ninja")) + sorted((ROOT / "build").glob("*/Makefile"))
        if not found:  # never built here: let the project's script configure and build it once
            subprocess.run(["bash", str(ROOT / "scripts" / "rebuild_native.sh")], cwd=ROOT, check=True)
            return Library.build_dir()
        return found[0].parent

    def build(self) -> tuple[bool, str]:
        folder = self.build_dir()
        result = subprocess.run(["cmake", "--build", str(folder), "--target", "fastfvae_cpu"], cwd=ROOT,
                                capture_output=True, text=True)
        output = result.stdout + result.stderr
        if result.returncode == 0:
            MUTANT_LIB.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / "libfastfvae_cpu.so", MUTANT_LIB / "libfastfvae_cpu.so")
        return result.returncode == 0, output

    def build_mutated(self) -> tuple[bool, str]:
        self.stale = True
        return self.build()

    def ensure_fresh(self) -> None:
        if not self.stale:
            return
        print("mutants: rebuilding the build folder's library from the restored sources", flush=True)
        ok, log = self.build()
        if not ok:
            raise SystemExit("mutants: the RESTORED library did not build; stopping:\n" + log[-3000:])
        self.stale = False


def run_tests(selection: tuple, extra_env: tuple, timeout: float) -> tuple[int | None, str]:
    """pytest on the selection: (return code, or None on timeout; the output's tail)."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1",
               PYTHONDONTWRITEBYTECODE="1")  # no stale bytecode of a patched file
    env.pop("FASTFVAE_BACKEND", None)
    env.update(dict(extra_env))
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *selection]
    try:
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                                start_new_session=True)
    except subprocess.TimeoutExpired as error:
        out = error.stdout or b""
        return None, (out.decode() if isinstance(out, bytes) else out)[-2000:]
    return result.returncode, (result.stdout + result.stderr)[-2000:]


# ---------------------------------------------------------------------------------------------
# One mutant
# ---------------------------------------------------------------------------------------------
def judge(mutant: Mutant, library: Library, timeout: float, verbose: bool) -> tuple[str, str]:
    """(status, detail): CAUGHT, SURVIVED or ERROR."""
    problem = check_target(mutant)
    if problem:
        return "ERROR", problem
    with Applied(mutant):  # the file is restored on any exit, Ctrl-C included
        if mutant.native:
            ok, log = library.build_mutated()
            if not ok:
                return "ERROR", "the mutated library did not build:\n" + log[-1500:]
        env = mutant.env + ((("FASTFVAE_NATIVE_LIB_DIR", str(MUTANT_LIB)),) if mutant.native else ())
        code, output = run_tests(mutant.tests, env, timeout)
    if verbose:
        print(output)
    if code is None:
        return "CAUGHT", f"tests timed out after {timeout:.0f} s (a hang counts as caught)"
    if code == 1:
        failed = [line for line in output.splitlines() if line.startswith("FAILED")]
        return "CAUGHT", (failed[0][7:] if failed else "tests failed")[:150]
    if code == 0:
        return "SURVIVED", "every selected test passed"
    return "ERROR", f"pytest exited {code} (5: no test selected):\n{output[-800:]}"


def baseline(mutants, timeout: float) -> bool:
    """The selections pass on the unmodified code (else 'caught' would mean nothing)."""
    seen, ok = set(), True
    for m in mutants:
        key = (m.tests, m.env)
        if key in seen:
            continue
        seen.add(key)
        start = time.perf_counter()
        code, output = run_tests(m.tests, m.env, timeout)
        took = time.perf_counter() - start
        print(f"baseline {'ok  ' if code == 0 else 'FAIL'} {took:6.1f} s  {' '.join(m.tests)}", flush=True)
        if code != 0:
            print(output)
            ok = False
    return ok


def _hold_run_lock():
    """One run at a time per checkout (a second would restore the first one's patched file):
    an exclusive lock, released when the process ends however it ends."""
    PENDING.parent.mkdir(parents=True, exist_ok=True)
    handle = open(PENDING.parent / "run.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit("mutants: another scripts/mutants.py run is in progress in this checkout") from None
    return handle


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", dest="names", action="append", default=[],
                        help="run only mutants whose name contains this (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--check", action="store_true", help="only check that every patch applies")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmodified-code run of the selections")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per test run (default 900)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print pytest's output for each mutant")
    args = parser.parse_args(argv)

    names = [m.name for m in MUTANTS]
    if len(set(names)) != len(names):
        raise SystemExit("mutants: duplicate mutant names")
    chosen = [m for m in MUTANTS if not args.names or any(n in m.name for n in args.names)]
    if args.list:
        for m in chosen:
            print(f"{m.name:45s} {m.path}\n    {m.bug}\n    tests: {' '.join(m.tests)}")
        return 0
    _lock = _hold_run_lock()  # held until the process exits  # noqa: F841
    restore_pending()
    problems = [(m, check_target(m)) for m in chosen]
    for m, problem in problems:
        if problem:
            print(f"ERROR {m.name}: {problem}")
    if args.check:
        print(f"mutants: {sum(p is None for _, p in problems)} of {len(chosen)} patches apply")
        return 0 if all(p is None for _, p in problems) else 1
    # SIGTERM as Ctrl-C: the with-blocks restore the file on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    if not args.no_baseline and not baseline(chosen, args.timeout):
        print("mutants: a selection fails on the unmodified code; fix that first")
        return 1

    rows, library = [], Library()
    try:
        for m in sorted(chosen, key=lambda m: m.native):  # the C++ ones together, last
            start = time.perf_counter()
            status, detail = judge(m, library, args.timeout, args.verbose)
            took = time.perf_counter() - start
            rows.append((m, status, detail, took))
            print(f"{status:8s} {took:6.1f} s  {m.name}: {detail.splitlines()[0] if detail else ''}", flush=True)
            if status == "ERROR" and "\n" in detail:
                print(detail)
    finally:
        library.ensure_fresh()

    caught = sum(status == "CAUGHT" for _, status, _, _ in rows)
    survived = [m.name for m, status, _, _ in rows if status == "SURVIVED"]
    errors = [m.name for m, status, _, _ in rows if status == "ERROR"]
    print("\n| mutant | file | planted bug | result | s |\n|---|---|---|---|---|")
    for m, status, _, took in rows:
        print(f"| {m.name} | {m.path} | {m.bug} | {status.lower()} | {took:.0f} |")
    print(f"\nmutants: {caught} of {len(rows)} caught, {len(survived)} survived"
          f"{' (' + ', '.join(survived) + ')' if survived else ''}, {len(errors)} errors"
          f"{' (' + ', '.join(errors) + ')' if errors else ''}")
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
