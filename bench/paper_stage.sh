#!/usr/bin/env bash
# bench/paper_stage.sh -- the GPU "paper" stage (bench/gpu_check.sh calls it when present).
#
# 1. bench/paper_stage.py: steps/s of the 1Konny loop, fastfvae eager and fastfvae --graph over
#    PAPER_STEPS (default 2000) steps at batch 64, and each one's projected 300,000-step time.
# 2. When PAPER_FULL_RUN=1 (and the budget allows: PAPER_BUDGET_S, default 240 s for the run),
#    the paper's full run: `fastfvae train --steps 300000 --graph` with its end-of-run metrics,
#    stopped (SIGINT: it checkpoints and writes its summary) when the budget runs out.
# Output: $OUT/paper_stage.md (+ the run folder $OUT/paper_run) when $OUT is set, else stdout.
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
DEST=${OUT:-$(mktemp -d)}
STEPS=${PAPER_STEPS:-2000}
BUDGET=${PAPER_BUDGET_S:-240}
mkdir -p "$DEST"
status=0
timeout -s INT 200 "$PY" -m bench.paper_stage --steps "$STEPS" --out "$DEST/paper_stage.md" || status=$?
if [ "${PAPER_FULL_RUN:-0}" = "1" ]; then
  echo "paper stage: full run, budget ${BUDGET}s" | tee -a "$DEST/paper_stage.md"
  start=$(date +%s)
  timeout -s INT "$BUDGET" "$PY" -m fastfvae train --steps 300000 --graph --device cuda --log-every 1000 \
    --checkpoint-every 50000 --out "$DEST/paper_run" > "$DEST/paper_run.log" 2>&1 || status=$?
  echo "paper stage: full run exit $status after $(( $(date +%s) - start ))s; summary:" >> "$DEST/paper_stage.md"
  cat "$DEST/paper_run/summary.json" >> "$DEST/paper_stage.md" 2>/dev/null || tail -20 "$DEST/paper_run.log" >> "$DEST/paper_stage.md"
fi
[ -z "${OUT:-}" ] && cat "$DEST/paper_stage.md" 2>/dev/null
exit $status
