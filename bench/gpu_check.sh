#!/usr/bin/env bash
# bench/gpu_check.sh -- the one-command GPU check (DESIGN.md §15).
#
# Made for a fresh GPU box lent for ~15 minutes in all (cold start included), no network: the
# command itself must end inside 600 s, and the most valuable stages run first so that a cut
# run still answers the important questions. Stages, in order, with their limits (seconds):
#
#   env         30  (a cold torch import alone can take 10 s) python + its headers (Triton
#                   compiles its launcher with them), gcc, nvcc,
#                   the driver, torch and torch.version.cuda, triton, the GPU, pytest plugins
#   build      100  CMake build of both libraries for this GPU into ./fastfvae/_lib, then the
#                   probe: ldd of libfastfvae_cuda.so (no libcudart: it is static) and ONE REAL
#                   1x1 kernel call through the native CUDA library, compared with the reference
#   warm        35  one call of every Triton kernel at the test and benchmark sizes, into one
#                   TRITON_CACHE_DIR that every later stage (and every xdist worker) reads
#   tests-ops  150  the op/backend tests (OP_TESTS), CUDA and Triton cases only
#                   (-k "cuda or triton"), pytest-xdist over the box's cores when installed, else
#                   two halves in parallel; no --maxfail, a per-test timeout instead
#   review      25  kernels/cuda/review_checks.py: the GPU-only checks of kernels/cuda/REVIEW.md
#                   (stale error after a failed call, log_qz local memory, CUDA vs Triton eps bit
#                   identity, grid-axis limits, workspace path, determinism, two-stage
#                   reductions, permute fallback in a torch workspace)
#   bench-key   80  benchmarks (BENCH_KEY): loss head, permute_dims, training step, the
#                   interleaved whole step
#   roofline    20  bench/roofline.py on the GPU: HBM bandwidth, Triton's Philox rates, every op's
#                   time against its floor at the CUDA sizes (roofline.json; the report renders it)
#   tests-rest  35  every other test file (losses, models, train, metrics, ...) on the GPU box;
#                   only tests/test_triton_interpret.py (the interpreter re-run, for CPU-only CI)
#                   runs in neither tests stage
#   bench-rest  35  benchmarks (BENCH_REST): reparameterize_kl, tc_loss, discriminator_loss, log_qz
#   paper       50  bench/paper_stage.sh when present (the paper-reproduction hook, filled in by
#                   the training side); "not present" otherwise
#   metrics     30  the metric battery at disentanglement_lib's sizes on the GPU (bench/test_metrics.py)
#   report      10  bench/report.py on the benchmark JSON
#                  ---
#   total      600  <= 600 (GPU_CHECK_BUDGET_S caps the whole run; each stage also gets at most
#                   what is left of it)
#
# Adding a stage: one name:limit entry in PLAN (keeping the total <= 600) and one
# `run_stage NAME LOG COMMAND ARGS...` line where it belongs; COMMAND is a program or a function
# of this script, and its arguments are passed as arguments (never pasted into a shell string).
# Then add the stage to STAGES in tests/test_gpu_check.py with a check of its command.
#
# Paper timing (16 cores, warm box): the build is ~60-90 s of nvcc (4 dtypes x 6 .cu files, one
# architecture); a cold Triton compile is 0.5-1 s per specialisation (5.6 s for the 4096-key
# sort), ~25 s for the warm set; the CUDA/Triton op cases are ~600 at ~0.1 s each after warm-up,
# ~60-80 s on 8 workers. A stage cut by its limit gets SIGINT first (pytest still writes its
# summary and JSON), and its log keeps one line per finished test (-v), counted into the stage
# table as partial results.
#
# Output: $OUT/gpu_check.md (stage table, partial counts, test failures, review checks, report)
# and the logs/JSON beside it when $OUT is set; otherwise a temporary folder, summary on stdout.
#
# Usage:  bash bench/gpu_check.sh              (python3 on PATH must have torch with CUDA)
#         PYTHON=/path/to/python bash bench/gpu_check.sh
#         bash bench/gpu_check.sh --build-only  (env + build stages, even without a GPU)
#         bash bench/gpu_check.sh --plumbing    (every stage without a GPU, on the CPU: a test of the
#                                                script; the CUDA library is not built unless
#                                                GPU_CHECK_PLUMBING_CUDA=1; GPU_CHECK_TESTS narrows the tests)
#         bash bench/gpu_check.sh --dry-run [--plumbing|--build-only]
#                                               (run nothing: print the plan, its total and every
#                                                stage's command, shell-quoted, one "stage" line each;
#                                                exit 1 when a stage's command is not a program or a
#                                                function of this script, or a stage is not in PLAN)
# Knobs:  GPU_CHECK_BUDGET_S (default 600), GPU_CHECK_WORKERS (xdist workers, default 8),
#         GPU_CHECK_ARCH (CUDA architectures, default: this GPU's), GPU_CHECK_TESTS (test paths,
#         space-separated, for the tests-ops stage; tests-rest is skipped when set),
#         GPU_CHECK_LIMIT_SCALE (every stage limit and the budget multiplied by it: 1, or 3 for
#         --plumbing on a slow shared CPU), FASTFVAE_BENCH_COMPILE=0.
# Exit status: 0 when every stage that ran exited 0 (or when there is no GPU: nothing to check).
#
# shellcheck disable=SC2317  # the stage functions run through run_stage (in a child bash), which shellcheck cannot follow
set -u -o pipefail

cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
PY=${PYTHON:-python3}
START=$(date +%s)

MODE=run
DRY_RUN=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY_RUN=1;;
    --plumbing|--build-only) MODE=$arg;;
    *) echo "gpu_check: unknown argument '$arg' (see the Usage lines at the top of $0)" >&2; exit 2;;
  esac
done

# ---------------------------------------------------------------------------------------- plan
# name:limit, in run order (the header above explains each; --dry-run prints and adds them).
PLAN=(env:30 build:100 warm:35 tests-ops:150 review:25 bench-key:80 roofline:20 tests-rest:35 bench-rest:35 paper:50 metrics:30 report:10)
# --plumbing runs on a (slow, shared) CPU: its limits are scaled by GPU_CHECK_LIMIT_SCALE (3).
SCALE=${GPU_CHECK_LIMIT_SCALE:-1}
[ "$MODE" = "--plumbing" ] && SCALE=${GPU_CHECK_LIMIT_SCALE:-3}
# limit_of NAME: the stage's limit in seconds (scaled), or 0 when NAME is not in PLAN.
limit_of() {
  local s
  for s in "${PLAN[@]}"; do [ "${s%%:*}" = "$1" ] && { echo $(( ${s##*:} * SCALE )); return; }; done
  echo 0
}
PLAN_TOTAL=0; for s in "${PLAN[@]}"; do PLAN_TOTAL=$((PLAN_TOTAL + ${s##*:})); done
BUDGET=${GPU_CHECK_BUDGET_S:-$((PLAN_TOTAL * SCALE))}

# The op/backend test files (tests-ops, CUDA and Triton cases); every other file of tests/ but
# NOT_ON_GPU runs in tests-rest.
OP_TESTS=(
  tests/test_reparameterize_kl.py tests/test_permute_dims.py tests/test_tc_loss.py
  tests/test_discriminator_loss.py tests/test_log_qz.py tests/test_triton.py tests/test_native.py
  tests/test_cuda_host.py tests/test_dispatch.py tests/test_compile.py
)
# The interpreter re-run is for CPU-only CI; on a GPU the triton cases run compiled, in-process.
NOT_ON_GPU=(tests/test_triton_interpret.py)
# test_step.py::test_step_interleaved: the eager and --graph steps and the 1Konny loop at B = 64,
# called in turn (the >= 5x graph target; ~20 x 3 steps plus the graph's capture).
BENCH_KEY=(bench/test_loss_head.py bench/test_permute_dims.py bench/test_train_step.py bench/test_step.py::test_step_interleaved)
BENCH_REST=(bench/test_reparameterize_kl.py bench/test_tc_loss.py bench/test_discriminator_loss.py bench/test_log_qz.py)

if [ "$DRY_RUN" = 1 ]; then
  DEST=${OUT:-/tmp/gpu_check.XXXXXX}    # printed in the commands; nothing is written
elif [ -n "${OUT:-}" ]; then
  DEST=$OUT; TO_STDOUT=0
else
  DEST=$(mktemp -d /tmp/gpu_check.XXXXXX); TO_STDOUT=1
fi
SUMMARY=$DEST/gpu_check.md
STAGES=$DEST/.stages          # stage table rows, folded into gpu_check.md at the end
if [ "$DRY_RUN" = 0 ]; then mkdir -p "$DEST"; : >"$STAGES"; fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# The libraries this run builds, whatever an installed fastfvae would point at.
export FASTFVAE_NATIVE_LIB_DIR="$REPO/fastfvae/_lib"
export PYTHONUNBUFFERED=1
# One Triton cache for the warm stage, the tests (every xdist worker) and the benchmarks.
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$REPO/build/triton-cache}
# A private Inductor cache: a stale entry compiled against other sources of the custom ops
# would call them with old arguments.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$REPO/build/inductor-cache}
# What the stage functions read besides their arguments.
export PY REPO
OVERALL=0

# ---------------------------------------------------------------------------------------- machinery
# "passed 12 failed 1 ..." from a pytest -v log (also when the run was cut: one line per test,
# "path::test WORD [ 10%]", or "[gw0] [ 10%] WORD path::test" under xdist; the -rfE summary
# lines are not counted).
count_results() {
  local log=$1 out="" word n
  [ -s "$log" ] || { echo "no log"; return; }
  for word in PASSED FAILED ERROR SKIPPED XFAIL; do
    n=$(grep -c -E "(::[^ ]* $word +\[ *[0-9]+%\]\$)|(^\[gw[0-9]+\] \[ *[0-9]+%\] $word )" "$log" || true)
    [ "$n" -gt 0 ] && out="$out $(echo "$word" | tr '[:upper:]' '[:lower:]') $n"
  done
  echo "${out# }"
}

# record ROW: one row of the stage table (a dry run records nothing).
record() { [ "$DRY_RUN" = 1 ] || echo "$1" >>"$STAGES"; }

# skip_stage NAME WHY: a stage that does not run, with its reason.
skip_stage() {
  [ "$DRY_RUN" = 1 ] && { echo "stage $1: not run ($2)"; return; }
  record "| $1 | not run | 0 | $(limit_of "$1") | $2 |"
}

# run_stage NAME LOG COMMAND [ARGS...]: run COMMAND (a program, or a function of this script)
# with ARGS under the stage's limit and what is left of the overall budget, its output appended
# to LOG; record the stage's row. A dry run prints the command (shell-quoted) instead.
run_stage() {
  local name=$1 log=$2; shift 2
  local limit; limit=$(limit_of "$name")
  if [ "$limit" -le 0 ] || ! { declare -F "$1" >/dev/null || command -v "$1" >/dev/null; }; then
    echo "stage $name: BROKEN: not in PLAN, or '$1' is neither a program nor a function of this script" >&2
    record "| $name | broken | 0 | $limit | not in PLAN or no command '$1' |"; OVERALL=1; return 2
  fi
  if [ "$DRY_RUN" = 1 ]; then
    printf 'stage %s (limit %ss, log %s):' "$name" "$limit" "$log"; printf ' %q' "$@"; echo
    return 0
  fi
  local left=$((START + BUDGET - $(date +%s)))
  if [ "$left" -lt 5 ]; then
    record "| $name | not run | 0 | $limit | overall budget spent |"; OVERALL=1; return 124
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0 rc; t0=$(date +%s)
  { printf '== %s (limit %ss):' "$name" "$limit"; printf ' %q' "$@"; echo; } | tee -a "$log"
  if declare -F "$1" >/dev/null; then
    # `timeout` runs programs, not shell functions: a function stage runs in a child bash given
    # the text of this script's functions and the stage's command and arguments as "$@".
    timeout -s INT -k 10 "$limit" bash -c "$(declare -f)"$'\n''"$@"' "gpu_check-$name" "$@" >>"$log" 2>&1
  else
    timeout -s INT -k 10 "$limit" "$@" >>"$log" 2>&1
  fi
  rc=$?
  # A stage cut before run_tests gathered its halves' logs: keep what they wrote (the half run in
  # the background ignores SIGINT, as asynchronous commands of a non-interactive bash do, and
  # is killed 10 s later).
  local part
  for part in "$log".part*; do [ -f "$part" ] && { cat "$part" >>"$log"; rm -f "$part"; }; done
  local took=$(( $(date +%s) - t0 ))
  local note="ok"
  { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] || [ "$rc" -eq 130 ]; } && note="TIMED OUT"
  [ "$rc" -ne 0 ] && [ "$note" = "ok" ] && note="FAILED (see $(basename "$log"))"
  case $name in
    tests-*) note="$note; $(count_results "$log")";;
    review) note="$note; $(grep -c -E '^check .*: PASS' "$log") pass, $(grep -c -E '^check .*: FAIL' "$log") fail, $(grep -c -E '^check .*: SKIP' "$log") skip";;
  esac
  record "| $name | $rc | $took | $limit | $note |"
  echo "== $name: exit $rc after ${took}s" | tee -a "$log"
  [ "$rc" -ne 0 ] && OVERALL=1
  return "$rc"
}

finish() {
  if [ "$DRY_RUN" = 1 ]; then
    echo "  total        = ${PLAN_TOTAL}s (must be <= 600: the device command limit)"
    [ "$PLAN_TOTAL" -le 600 ] || { echo "PLAN OVER 600 s"; OVERALL=1; }
    return
  fi
  {
    echo "# fastfvae GPU check"
    echo
    echo "Run $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname), commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown), total $(( $(date +%s) - START ))s of ${BUDGET}s."
    echo
    grep -E '^(python|headers|gcc|torch|triton|cuda available|gpu|capability|driver|nvcc|cmake|nvidia-smi|libs|ldd|ptx|probe|backends)[ :]' "$DEST/env.log" 2>/dev/null | sed 's/^/- /'
    echo
    echo "| stage | exit | seconds | limit | status |"
    echo "|---|---|---|---|---|"
    cat "$STAGES"
    echo
    for t in tests-ops tests-rest; do
      if [ -s "$DEST/$t.log" ]; then
        echo "## $t (failures and summary)"
        echo
        echo '```'
        grep -E '^(FAILED|ERROR)|(^| )(FAILED|ERROR) tests/|[0-9]+ (passed|failed)|Timeout' "$DEST/$t.log" | sort -u | tail -40
        echo '```'
        echo
      fi
    done
    if [ -s "$DEST/review.log" ]; then
      echo "## review checks (kernels/cuda/REVIEW.md)"
      echo
      grep -E '^check ' "$DEST/review.log" | sed 's/^/- /'
      echo
    fi
    if [ -s "$DEST/report.md" ]; then
      cat "$DEST/report.md"
    else
      echo "No benchmark report (see bench.log)."
      [ -s "$DEST/bench.log" ] && { echo '```'; tail -30 "$DEST/bench.log"; echo '```'; }
    fi
  } >"$SUMMARY"
  rm -f "$STAGES" "$DEST/report.md"
  if [ "$TO_STDOUT" = 1 ]; then
    cat "$SUMMARY"; echo; echo "(logs in $DEST)"
  elif [ "$(wc -c <"$SUMMARY")" -gt 9000 ]; then
    # The last 9000 bytes from a line's start: a cut inside a line could split a UTF-8 character
    # (the tables' "×" and "µ") and hand the caller bytes that are not text.
    tail -c 9000 "$SUMMARY" | tail -n +2
  else
    cat "$SUMMARY"
  fi
}

# ---------------------------------------------------------------------------------------- stage functions
# env_probe: python and its headers, torch, triton, the GPU, the pytest plugins, the tool chain.
env_probe() {
  echo "python: $("$PY" --version 2>&1) at $(command -v "$PY")"
  "$PY" - <<'EOF'
import importlib, os, sysconfig
include = sysconfig.get_paths().get("include", "")
print(f"headers: {include} Python.h {'present' if os.path.isfile(os.path.join(include, 'Python.h')) else 'MISSING (Triton cannot build its launcher)'}")
try:
    import torch
except ImportError as error:
    print(f"torch: NOT importable ({error})"); raise SystemExit(3)
print(f"torch: {torch.__version__}, torch.version.cuda {torch.version.cuda}")
try:
    import triton
    print(f"triton: {triton.__version__}")
except ImportError:
    print("triton: not installed")
ok = torch.cuda.is_available()
print(f"cuda available: {ok}")
if ok:
    major, minor = torch.cuda.get_device_capability(0)
    props = torch.cuda.get_device_properties(0)
    print(f"gpu: {torch.cuda.get_device_name(0)}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs")
    print(f"capability: {major}{minor}")
for name in ("pytest", "pytest_benchmark", "hypothesis", "numpy", "einops", "pytest_timeout", "xdist", "PIL", "sklearn"):
    try:
        module = importlib.import_module(name)
        print(f"module {name}: {getattr(module, '__version__', 'present')}")
    except ImportError:
        print(f"module {name}: MISSING")
EOF
  local rc=$?
  echo "gcc: $(gcc --version 2>/dev/null | head -1 || echo 'not found')"
  echo "nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo 'not found')"
  echo "driver: $(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1 || echo 'no nvidia-smi')"
  echo "cmake: $(cmake --version 2>/dev/null | head -1 || echo 'not found'), ninja: $(ninja --version 2>/dev/null || echo 'not found')"
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv,noheader 2>/dev/null | sed 's/^/nvidia-smi: /'
  return "$rc"
}

# build_native BUILD_CUDA(ON|OFF) ARCH REQUIRE_CUDA(0|1): CMake build and install of the native
# libraries into fastfvae/_lib, then the probe.
build_native() {
  local build_cuda=$1 arch=$2 require_cuda=$3
  local gen=() jobs
  jobs=$(nproc 2>/dev/null || echo 4)
  command -v ninja >/dev/null 2>&1 && { gen=(-G Ninja); export CMAKE_GENERATOR=Ninja; }
  export CMAKE_BUILD_PARALLEL_LEVEL=$jobs   # the CUDA sub-build's `cmake --build` too
  rm -rf build/gpu-check
  cmake -S . -B build/gpu-check "${gen[@]}" -DCMAKE_BUILD_TYPE=Release "-DFASTFVAE_CUDA=$build_cuda" \
        "-DFASTFVAE_CUDA_ARCHITECTURES=$arch" "-DCMAKE_INSTALL_PREFIX=$REPO" || return 1
  cmake --build build/gpu-check -j "$jobs" || return 1
  cmake --install build/gpu-check || return 1
  echo "libs: $(cd fastfvae/_lib 2>/dev/null && printf '%s ' *)"
  if [ "$require_cuda" != 0 ]; then
    [ -f fastfvae/_lib/libfastfvae_cuda.so ] || { echo "build: the CUDA library was NOT built (see the CMake warnings above)"; return 1; }
    echo "ldd: $(ldd fastfvae/_lib/libfastfvae_cuda.so | grep -E -o 'lib(cudart|cuda)[^ ]*' | tr '\n' ' ')(no libcudart expected: static runtime)"
    echo "ptx: $(cuobjdump --list-ptx fastfvae/_lib/libfastfvae_cuda.so 2>/dev/null | grep -E -o 'sm_[0-9]+' | sort -u | tr '\n' ' ')(PTX for forward compatibility)"
  fi
  # The probe: one real 1x1 call per present library, compared with the reference backend.
  "$PY" - <<'EOF'
import torch
import fastfvae.backends as b
from fastfvae.backends import native, reference
devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
failed = False
for device in devices:
    library, reason = native.load(device)
    if library is None:
        print(f"probe: native {device}: NOT loaded ({reason})"); failed = True; continue
    mu = torch.full((1, 1), 0.25, device=device)
    logvar = torch.full((1, 1), -0.5, device=device)
    seed = torch.tensor([12345], dtype=torch.int64, device=device)
    try:
        z, kl = native.reparameterize_kl_forward(mu, logvar, None, seed, "mean")
        if device == "cuda":
            torch.cuda.synchronize()
        z_ref, kl_ref = reference.reparameterize_kl_forward(mu, logvar, None, seed, "mean")
        ok = torch.allclose(z, z_ref, rtol=1e-5, atol=1e-6) and torch.allclose(kl, kl_ref, rtol=1e-5, atol=1e-6)
        print(f"probe: native {device} 1x1 reparameterize_kl {'ok' if ok else 'WRONG'}: z {z.item():.7f} (reference {z_ref.item():.7f})")
        failed |= not ok
    except Exception as error:  # a load that works but a call that does not (driver too old, ...)
        print(f"probe: native {device} 1x1 call FAILED: {error}"); failed = True
    for op in ("reparameterize_kl", "permute_dims", "tc_loss", "discriminator_loss", "log_qz"):
        print(f"backends {device} {op}:", {n: (r or "ok") for n, r in b.reasons(op, torch.device(device), torch.float32).items()})
raise SystemExit(1 if failed else 0)
EOF
}

# warm_triton: every Triton kernel once, into TRITON_CACHE_DIR.
warm_triton() {
  "$PY" - <<'EOF'
import time, torch, fastfvae
from fastfvae import backends
device = "cuda" if torch.cuda.is_available() else "cpu"
if backends.reason_not_served("triton", "reparameterize_kl", torch.device(device), torch.float32):
    print("warm: triton cannot serve this device; nothing to warm"); raise SystemExit(0)
t0 = time.time()
for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
    for batch, dim in ((1, 1), (7, 3), (64, 10), (4096, 32)):
        mu = torch.randn(batch, dim, device=device, dtype=dtype, requires_grad=True)
        lv = torch.randn(batch, dim, device=device, dtype=dtype, requires_grad=True)
        for reduction in ("mean", "none"):
            z, kl = fastfvae.reparameterize_kl(mu, lv, reduction=reduction, backend="triton")
            (z.float().sum() + kl.float().sum()).backward()
        fastfvae.permute_dims(z.detach(), backend="triton")
        for k in (1, 2):
            logits = torch.randn(batch, k, device=device, dtype=dtype, requires_grad=True)
            fastfvae.tc_loss(logits, backend="triton").backward()
            fastfvae.discriminator_loss(logits, logits.detach().clone().requires_grad_(), backend="triton").backward()
        if dim <= 64 and batch <= 64:
            zq = torch.randn(batch, dim, device=device, dtype=dtype, requires_grad=True)
            outs = fastfvae.log_qz(zq, mu.detach(), lv.detach(), dataset_size=1000, backend="triton")
            sum(o.float().sum() for o in outs).backward()
    print(f"warm: {dtype} done at {time.time() - t0:.1f}s")
if device == "cuda":
    torch.cuda.synchronize()
EOF
}

# run_tests LOG WORKERS PATHS... -- PYTEST_ARGS...: pytest on PATHS, on WORKERS pytest-xdist
# workers, or (WORKERS 0) two halves of PATHS in parallel, each into its own log appended to LOG's
# output at the end. Each pytest command is printed first. pytest's exit status 5 ("no tests
# collected", e.g. a half whose tests -k deselects) is a pass.
run_tests() {
  local log=$1 workers=$2; shift 2
  local paths=() args=() rc rc1 rc2 pid half
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do paths+=("$1"); shift; done
  [ $# -gt 0 ] && { shift; args=("$@"); }
  if [ "$workers" -gt 0 ] || [ "${#paths[@]}" -lt 2 ]; then
    [ "$workers" -gt 0 ] && args+=(-n "$workers")
    echo "pytest command:$(printf ' %q' "$PY" -m pytest "${paths[@]}" "${args[@]}")"
    "$PY" -m pytest "${paths[@]}" "${args[@]}"
    rc=$?
    [ "$rc" -eq 5 ] && rc=0
    return "$rc"
  fi
  half=$(( ${#paths[@]} / 2 ))
  echo "pytest command:$(printf ' %q' "$PY" -m pytest "${paths[@]:0:$half}" "${args[@]}")"
  echo "pytest command:$(printf ' %q' "$PY" -m pytest "${paths[@]:$half}" "${args[@]}")"
  "$PY" -m pytest "${paths[@]:0:$half}" "${args[@]}" >"$log.part1" 2>&1 &
  pid=$!
  "$PY" -m pytest "${paths[@]:$half}" "${args[@]}" >"$log.part2" 2>&1
  rc2=$?
  wait "$pid"; rc1=$?
  [ "$rc1" -eq 5 ] && rc1=0
  [ "$rc2" -eq 5 ] && rc2=0
  cat "$log.part1" "$log.part2"; rm -f "$log.part1" "$log.part2"
  [ "$rc1" -ne 0 ] && return "$rc1"
  return "$rc2"
}

# has_module NAME: the env stage found python module NAME (a dry run asks the python itself).
has_module() {
  if [ -s "$DEST/env.log" ]; then
    grep -q "^module $1: " "$DEST/env.log" && ! grep -q "^module $1: MISSING" "$DEST/env.log"
  else
    "$PY" -c "import $1" >/dev/null 2>&1
  fi
}

# in_list WORD LIST...: WORD is one of LIST.
in_list() { local word=$1 item; shift; for item in "$@"; do [ "$item" = "$word" ] && return 0; done; return 1; }

# ---------------------------------------------------------------------------------------- env, build
if [ "$DRY_RUN" = 1 ]; then
  echo "gpu_check dry run (nothing executed, mode $MODE): python \"$PY\", budget ${BUDGET}s (limits x$SCALE)"
  for s in "${PLAN[@]}"; do printf '  %-11s <= %4ss\n' "${s%%:*}" "${s##*:}"; done
fi

run_stage env "$DEST/env.log" env_probe
if [ "$DRY_RUN" = 1 ]; then
  CUDA_OK=1; [ "$MODE" = run ] || CUDA_OK=0    # a dry run describes the GPU run (or the mode given)
else
  CUDA_OK=$(grep -c '^cuda available: True' "$DEST/env.log")
fi
if [ "$CUDA_OK" = 0 ] && [ "$MODE" = run ]; then
  echo "gpu_check: no CUDA device visible to $PY (torch.cuda.is_available() is False, or torch is missing): nothing to check." | tee -a "$DEST/env.log"
  record "| gpu | — | 0 | 0 | no CUDA device: stopped |"
  finish
  exit 0
fi
# The GPU's own architecture (a dry run, which probes nothing, shows the fallback).
ARCH=${GPU_CHECK_ARCH:-}
[ -z "$ARCH" ] && [ "$DRY_RUN" = 0 ] && ARCH=$(sed -n 's/^capability: //p' "$DEST/env.log")
ARCH=${ARCH:-90}
BUILD_CUDA=ON
[ "$MODE" = "--plumbing" ] && [ "${GPU_CHECK_PLUMBING_CUDA:-0}" != 1 ] && BUILD_CUDA=OFF

run_stage build "$DEST/build.log" build_native "$BUILD_CUDA" "$ARCH" "$CUDA_OK"
[ "$DRY_RUN" = 1 ] || grep -E '^(libs|ldd|ptx|probe|backends)' "$DEST/build.log" >>"$DEST/env.log"
if [ "$MODE" = "--build-only" ]; then finish; exit "$OVERALL"; fi

run_stage warm "$DEST/warm.log" warm_triton

# ---------------------------------------------------------------------------------------- tests-ops, review
TEST_ARGS=(-v -p no:cacheprovider -p no:randomly -rfE)
has_module pytest_timeout && TEST_ARGS+=(--timeout=60)
# A plumbing run that skipped the CUDA build cannot pass the "CUDA library was built" test.
[ "$BUILD_CUDA" = OFF ] && TEST_ARGS+=(--deselect tests/test_build.py::test_cuda_sources_compiled)
WORKERS=0
has_module xdist && WORKERS=${GPU_CHECK_WORKERS:-8}

OPS_SELECTED=("${OP_TESTS[@]}")
[ -n "${GPU_CHECK_TESTS:-}" ] && read -r -a OPS_SELECTED <<<"$GPU_CHECK_TESTS"
run_stage tests-ops "$DEST/tests-ops.log" run_tests "$DEST/tests-ops.log" "$WORKERS" "${OPS_SELECTED[@]}" \
  -- "${TEST_ARGS[@]}" -k "cuda or triton"

run_stage review "$DEST/review.log" "$PY" kernels/cuda/review_checks.py

# ---------------------------------------------------------------------------------------- bench-key, tests-rest, bench-rest
export FASTFVAE_BENCH_DEVICES=cuda
[ "$MODE" = "--plumbing" ] && FASTFVAE_BENCH_DEVICES=cpu
# shellcheck disable=SC2054  # the comma in median,min,rounds belongs to one pytest option
BENCH_ARGS=(-q -p no:cacheprovider --benchmark-only --benchmark-columns=median,min,rounds)
if [ "$MODE" = "--plumbing" ]; then
  # The script's test on a CPU: a few quick rounds (real JSON, meaningless figures), no compiles.
  BENCH_ARGS+=(--benchmark-max-time=0.05 --benchmark-min-rounds=2 --benchmark-warmup=off)
  export FASTFVAE_BENCH_COMPILE=0
fi
run_stage bench-key "$DEST/bench.log" "$PY" -m pytest "${BENCH_ARGS[@]}" "${BENCH_KEY[@]}" \
  "--benchmark-json=$DEST/bench-key.json"

# The roofline (docs/DESIGN.md §14): the first GPU window records each op against its floor.
# --plumbing: the CPU harness at tiny sizes (a test of the stage, not a measurement).
ROOFLINE_ARGS=(--device cuda --rounds 10 --repeats 10)
[ "$MODE" = "--plumbing" ] && ROOFLINE_ARGS=(--device cpu --sizes 256x16 --log-qz-sizes 64x4 --rounds 2 --repeats 2)
run_stage roofline "$DEST/roofline.log" "$PY" -m bench.roofline "${ROOFLINE_ARGS[@]}" --json "$DEST/roofline.json"

if [ -z "${GPU_CHECK_TESTS:-}" ]; then
  REST_TESTS=()
  for f in tests/test_*.py; do
    in_list "$f" "${OP_TESTS[@]}" "${NOT_ON_GPU[@]}" || REST_TESTS+=("$f")
  done
  REST_ARGS=("${TEST_ARGS[@]}")
  # --plumbing runs on the CPU, where the suite itself runs these very tests: the stage's check
  # is its wiring (every file named, importable, the arguments accepted), so it collects them
  # (node ids, one a line) instead of running them a second time.
  [ "$MODE" = "--plumbing" ] && REST_ARGS+=(--collect-only -qq)
  run_stage tests-rest "$DEST/tests-rest.log" run_tests "$DEST/tests-rest.log" "$WORKERS" "${REST_TESTS[@]}" \
    -- "${REST_ARGS[@]}"
else
  skip_stage tests-rest "GPU_CHECK_TESTS set"
fi

run_stage bench-rest "$DEST/bench.log" "$PY" -m pytest "${BENCH_ARGS[@]}" "${BENCH_REST[@]}" \
  "--benchmark-json=$DEST/bench-rest.json"

# ---------------------------------------------------------------------------------------- paper
# The paper-reproduction hook: bench/paper_stage.sh (owned by the training side) runs here when it
# exists, given this run's folder and python and this stage's limit; it writes what it has when cut.
if [ -f bench/paper_stage.sh ]; then
  run_stage paper "$DEST/paper.log" env "OUT=$DEST" "PYTHON=$PY" bash bench/paper_stage.sh
else
  skip_stage paper "bench/paper_stage.sh not present"
fi

# ---------------------------------------------------------------------------------------- metrics
# The metric battery: evaluate(preset="default", metrics="all") on the paper's encoder,
# rendering and encoding on the GPU (target: under 30 s), DCI with its default "batched"
# estimator, whose trees grow as torch operations on the GPU (the first GPU run of that path:
# tests/test_metrics_boosting.py checks it on a CPU). Its JSON rows carry no "impl", so the
# report below leaves them out; the per-metric seconds are in metrics.log and bench-metrics.json.
# --plumbing (a CPU) runs the battery's quick sizes once (--benchmark-disable): the full sizes take
# minutes there.
METRICS_ARGS=("${BENCH_ARGS[@]}")
[ "$MODE" = "--plumbing" ] && METRICS_ARGS=(-q -p no:cacheprovider --benchmark-disable)
run_stage metrics "$DEST/metrics.log" "$PY" -m pytest "${METRICS_ARGS[@]}" -s \
  bench/test_metrics.py -k test_metric_battery "--benchmark-json=$DEST/bench-metrics.json"

# ---------------------------------------------------------------------------------------- report
JSONS=()
for f in "$DEST/bench-key.json" "$DEST/bench-rest.json" "$DEST/roofline.json"; do
  { [ "$DRY_RUN" = 1 ] || [ -s "$f" ]; } && JSONS+=("$f")
done
if [ "${#JSONS[@]}" -gt 0 ]; then
  run_stage report "$DEST/bench.log" "$PY" bench/report.py "${JSONS[@]}" --output "$DEST/report.md"
else
  skip_stage report "no benchmark JSON"; OVERALL=1
fi

finish
exit "$OVERALL"
