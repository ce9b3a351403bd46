#!/usr/bin/env bash
# bench/gpu_check.sh -- the one-command GPU check (DESIGN.md §11).
#
# On a machine with a CUDA GPU, in one run of at most ~8 minutes and without the network:
#   1. env    : record python, torch, triton, nvcc, cmake and the GPU;
#   2. build  : build the native libraries (CPU + CUDA for this GPU's architecture) with CMake
#               directly into ./fastfvae/_lib, using the machine's own toolchain (installs nothing);
#   3. tests  : run the whole test suite (CUDA variants run because a GPU is present);
#   4. bench  : run the CUDA benchmarks (loss head, permute_dims, training step first; then the
#               other ops), writing pytest-benchmark JSON;
#   5. report : bench/report.py on that JSON.
# Each stage runs under `timeout` (SIGINT first, so pytest still writes its JSON) inside one
# overall deadline, and its exit status is recorded. Output: $OUT/gpu_check.md (stage table +
# report) with the logs and JSON beside it when $OUT is set; otherwise a temporary folder, and
# gpu_check.md is printed to stdout.
#
# Usage:  bash bench/gpu_check.sh              (python3 on PATH must have torch with CUDA)
#         PYTHON=/path/to/python bash bench/gpu_check.sh
#         bash bench/gpu_check.sh --dry-run     (print the plan, check nothing)
#         bash bench/gpu_check.sh --build-only  (env + build stages, even without a GPU)
#         bash bench/gpu_check.sh --plumbing    (every stage without a GPU, benchmarking the CPU:
#                                                tests the script itself; GPU_CHECK_TESTS narrows the tests)
# Knobs:  GPU_CHECK_BUDGET_S (default 460: total seconds), GPU_CHECK_XDIST (pytest-xdist workers
#         for the tests, default off), GPU_CHECK_ARCH (CUDA architectures, default: this GPU's),
#         FASTFVAE_BENCH_COMPILE=0 (skip the torch.compile baselines to save their compile time).
# Exit status: 0 when every stage that ran exited 0 (or when there is no GPU: nothing to check).
set -u -o pipefail

cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
PY=${PYTHON:-python3}
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-460}
MODE=${1:-run}

# Stage limits in seconds (each also clamped to what is left of the overall budget).
ENV_S=30; BUILD_S=100; TESTS_S=140; BENCH_KEY_S=100; BENCH_REST_S=75; REPORT_S=10

if [ "$MODE" = "--dry-run" ]; then
  cat <<EOF
gpu_check dry run (nothing executed). Would run, with python "$PY", inside ${BUDGET}s:
  env     (<= ${ENV_S}s)   python/torch/triton/nvcc/cmake versions, GPU name and capability
  build   (<= ${BUILD_S}s)  cmake -S . -B build/gpu-check -DFASTFVAE_CUDA_ARCHITECTURES=<this GPU>; build; install into ./fastfvae/_lib
  tests   (<= ${TESTS_S}s)  $PY -m pytest tests -q -ra --maxfail=10
  bench   (<= ${BENCH_KEY_S}s + ${BENCH_REST_S}s) FASTFVAE_BENCH_DEVICES=cuda pytest bench/... --benchmark-only --benchmark-json
  report  (<= ${REPORT_S}s)  $PY bench/report.py bench-*.json
Output: \$OUT/gpu_check.md (+ env.log build.log tests.log bench.log bench-key.json bench-rest.json) when OUT is set.
EOF
  exit 0
fi

if [ -n "${OUT:-}" ]; then
  DEST=$OUT; TO_STDOUT=0
else
  DEST=$(mktemp -d /tmp/gpu_check.XXXXXX); TO_STDOUT=1
fi
mkdir -p "$DEST"
SUMMARY=$DEST/gpu_check.md
STAGES=$DEST/.stages          # stage table rows, folded into gpu_check.md at the end
: >"$STAGES"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
OVERALL=0

# run_stage NAME LIMIT_S LOG COMMAND... : run under timeout within the overall deadline; record.
run_stage() {
  local name=$1 limit=$2 log=$3; shift 3
  local left=$((START + BUDGET - $(date +%s)))
  if [ "$left" -lt 10 ]; then
    echo "| $name | not run | 0 | 0 | overall budget spent |" >>"$STAGES"; OVERALL=1; return 124
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0; t0=$(date +%s)
  local shown="$*"
  echo "== $name (limit ${limit}s): ${shown%%$'\n'*}" | tee -a "$log"
  timeout -s INT -k 10 "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  local took=$(( $(date +%s) - t0 ))
  local note="ok"
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && note="TIMED OUT"
  [ "$rc" -ne 0 ] && [ "$note" = "ok" ] && note="FAILED (see $(basename "$log"))"
  echo "| $name | $rc | $took | $limit | $note |" >>"$STAGES"
  echo "== $name: exit $rc after ${took}s" | tee -a "$log"
  [ "$rc" -ne 0 ] && OVERALL=1
  return "$rc"
}

finish() {
  {
    echo "# fastfvae GPU check"
    echo
    echo "Run $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname), commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown), total $(( $(date +%s) - START ))s."
    echo
    grep -E '^(python|torch|triton|cuda available|gpu|capability|nvcc|cmake|nvidia-smi|libs|backends)[ :]' "$DEST/env.log" 2>/dev/null | sed 's/^/- /'
    echo
    echo "| stage | exit | seconds | limit | status |"
    echo "|---|---|---|---|---|"
    cat "$STAGES"
    echo
    if [ -s "$DEST/tests.log" ]; then
      echo "## tests (summary)"
      echo
      echo '```'
      grep -E '^(FAILED|ERROR|SKIPPED)|passed|failed|error' "$DEST/tests.log" | tail -40
      echo '```'
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
  if [ "$TO_STDOUT" = 1 ]; then cat "$SUMMARY"; echo; echo "(logs in $DEST)"; else tail -c 9000 "$SUMMARY"; fi
}

# ---------------------------------------------------------------------------------------- env
env_probe() {
  echo "python: $("$PY" --version 2>&1) at $(command -v "$PY")"
  "$PY" - <<'EOF'
import importlib
try:
    import torch
except ImportError as error:
    print(f"torch: NOT importable ({error})"); raise SystemExit(3)
print(f"torch: {torch.__version__}, built for CUDA {torch.version.cuda}")
try:
    import triton
    print(f"triton: {triton.__version__}")
except ImportError:
    print("triton: not installed")
ok = torch.cuda.is_available()
print(f"cuda available: {ok}")
if ok:
    major, minor = torch.cuda.get_device_capability(0)
    print(f"gpu: {torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
    print(f"capability: {major}{minor}")
for name in ("pytest", "pytest_benchmark", "hypothesis", "numpy", "einops", "pytest_timeout", "xdist"):
    try:
        module = importlib.import_module(name)
        print(f"module {name}: {getattr(module, '__version__', 'present')}")
    except ImportError:
        print(f"module {name}: MISSING")
EOF
  local rc=$?
  echo "nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo 'not found')"
  echo "cmake: $(cmake --version 2>/dev/null | head -1 || echo 'not found'), ninja: $(ninja --version 2>/dev/null || echo 'not found')"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader 2>/dev/null | sed 's/^/nvidia-smi: /'
  return $rc
}

# `timeout` runs programs, not shell functions: function stages run in `bash -c` with the
# function's text and these exported variables.
export PY REPO MODE

run_stage env "$ENV_S" "$DEST/env.log" bash -c "$(declare -f env_probe); env_probe"
CUDA_OK=$(grep -c '^cuda available: True' "$DEST/env.log")
if [ "$CUDA_OK" = 0 ] && [ "$MODE" != "--build-only" ] && [ "$MODE" != "--plumbing" ]; then
  echo "gpu_check: no CUDA device visible to $PY (torch.cuda.is_available() is False, or torch is missing): nothing to check." | tee -a "$DEST/env.log"
  echo "| gpu | — | 0 | 0 | no CUDA device: stopped |" >>"$STAGES"
  finish
  exit 0
fi
ARCH=${GPU_CHECK_ARCH:-$(sed -n 's/^capability: //p' "$DEST/env.log")}
ARCH=${ARCH:-90}
export ARCH CUDA_OK

# ---------------------------------------------------------------------------------------- build
build_native() {
  local gen=() jobs
  jobs=$(nproc 2>/dev/null || echo 4)
  command -v ninja >/dev/null 2>&1 && { gen=(-G Ninja); export CMAKE_GENERATOR=Ninja; }
  export CMAKE_BUILD_PARALLEL_LEVEL=$jobs   # the CUDA sub-build's `cmake --build` too
  rm -rf build/gpu-check
  cmake -S . -B build/gpu-check "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
        "-DFASTFVAE_CUDA_ARCHITECTURES=$ARCH" "-DCMAKE_INSTALL_PREFIX=$REPO" || return 1
  cmake --build build/gpu-check -j "$jobs" || return 1
  cmake --install build/gpu-check || return 1
  echo "libs: $(ls fastfvae/_lib 2>/dev/null | tr '\n' ' ')"
  if [ "$CUDA_OK" != 0 ]; then
    [ -n "$(ls fastfvae/_lib/*cuda* 2>/dev/null)" ] || { echo "build: the CUDA library was NOT built (see the CMake warnings above)"; return 1; }
  fi
  "$PY" -c "
import torch, fastfvae.backends as b
devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
for device in devices:
    for op in ('reparameterize_kl', 'permute_dims', 'tc_loss', 'discriminator_loss', 'log_qz'):
        print(f'backends {device} {op}:', {n: (r or 'ok') for n, r in b.reasons(op, torch.device(device), torch.float32).items()})
"
}
run_stage build "$BUILD_S" "$DEST/build.log" bash -c "$(declare -f build_native); build_native"
grep -E '^(libs|backends)' "$DEST/build.log" >>"$DEST/env.log"
if [ "$MODE" = "--build-only" ]; then finish; exit $OVERALL; fi

# ---------------------------------------------------------------------------------------- tests
has_module() { grep -q "^module $1: " "$DEST/env.log" && ! grep -q "^module $1: MISSING" "$DEST/env.log"; }
TEST_ARGS=(-q -ra -p no:cacheprovider --maxfail=10)
has_module pytest_timeout && TEST_ARGS+=(--timeout=120)
if [ -n "${GPU_CHECK_XDIST:-}" ] && has_module xdist; then
  TEST_ARGS+=(-n "$GPU_CHECK_XDIST")
fi
# shellcheck disable=SC2086 # GPU_CHECK_TESTS may name several paths
run_stage tests "$TESTS_S" "$DEST/tests.log" "$PY" -m pytest ${GPU_CHECK_TESTS:-tests} "${TEST_ARGS[@]}"

# ---------------------------------------------------------------------------------------- bench
export FASTFVAE_BENCH_DEVICES=cuda
[ "$MODE" = "--plumbing" ] && FASTFVAE_BENCH_DEVICES=cpu
BENCH_ARGS=(-q -p no:cacheprovider --benchmark-only --benchmark-columns=median,min,rounds)
run_stage bench-key "$BENCH_KEY_S" "$DEST/bench.log" "$PY" -m pytest "${BENCH_ARGS[@]}" \
  bench/test_loss_head.py bench/test_permute_dims.py bench/test_train_step.py --benchmark-json="$DEST/bench-key.json"
run_stage bench-rest "$BENCH_REST_S" "$DEST/bench.log" "$PY" -m pytest "${BENCH_ARGS[@]}" \
  bench/test_reparameterize_kl.py bench/test_tc_loss.py bench/test_discriminator_loss.py bench/test_log_qz.py \
  --benchmark-json="$DEST/bench-rest.json"

# ---------------------------------------------------------------------------------------- metrics
# The metric battery (issue 12): evaluate(preset="default", metrics="all") on the paper's encoder,
# rendering and encoding on the GPU (target: under 30 s), DCI with its hist estimator (the exact
# one is CPU-bound, minutes). Its JSON rows carry no "impl", so the
# report below leaves them out; the per-metric seconds are in metrics.log and bench-metrics.json.
METRICS_S=90
export FASTFVAE_BENCH_DCI=hist
run_stage metrics "$METRICS_S" "$DEST/metrics.log" "$PY" -m pytest "${BENCH_ARGS[@]}" -s \
  bench/test_metrics.py -k test_metric_battery --benchmark-json="$DEST/bench-metrics.json"

# ---------------------------------------------------------------------------------------- report
JSONS=()
for f in "$DEST/bench-key.json" "$DEST/bench-rest.json"; do [ -s "$f" ] && JSONS+=("$f"); done
if [ "${#JSONS[@]}" -gt 0 ]; then
  run_stage report "$REPORT_S" "$DEST/bench.log" "$PY" bench/report.py "${JSONS[@]}" --output "$DEST/report.md"
else
  echo "| report | not run | 0 | 0 | no benchmark JSON |" >>"$STAGES"; OVERALL=1
fi

finish
exit $OVERALL
