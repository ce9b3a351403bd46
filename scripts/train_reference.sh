#!/usr/bin/env bash
# Train (or resume) fastfvae's reference FactorVAE on the built-in dSprites: the paper's networks
# and optimiser settings, gamma = 35, batch 64, 10 latents, up to the paper's 300,000 steps.
#
# Start it again after any stop and it resumes from its last checkpoint (the trainer's resume is
# bit-exact at a fixed thread count, so the thread count is pinned). The run folder holds the
# discriminator and optimiser state, so it lives outside the repository, where the machine keeps it
# between working days: $FASTFVAE_REFERENCE_DIR, default ~/fastfvae-runs/reference.
#
#   bash scripts/train_reference.sh            # train / resume in the foreground
#   bash scripts/train_reference.sh --dry-run  # a few steps of the same recipe into a temp folder
#
# Environment: FASTFVAE_REFERENCE_DIR (run folder), FASTFVAE_REFERENCE_THREADS (default 1),
# FASTFVAE_REFERENCE_STEPS (default 300000), FASTFVAE_REFERENCE_SEED (default 0; the shipped
# model is seed 1's run: another seed, in its own folder, trains the same recipe from another
# start), FASTFVAE_REFERENCE_OBJECTIVE (default factorvae; betavae trains the paper's baseline,
# beta-VAE with beta = 4, on the same networks and settings, for the comparison at matched
# reconstruction), PYTHON (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${FASTFVAE_REFERENCE_DIR:-$HOME/fastfvae-runs/reference}
THREADS=${FASTFVAE_REFERENCE_THREADS:-1}
STEPS=${FASTFVAE_REFERENCE_STEPS:-300000}
SEED=${FASTFVAE_REFERENCE_SEED:-0}
OBJECTIVE=${FASTFVAE_REFERENCE_OBJECTIVE:-factorvae}
case "$OBJECTIVE" in
  factorvae|betavae) ;;
  *) echo "train_reference: FASTFVAE_REFERENCE_OBJECTIVE must be factorvae or betavae, got '$OBJECTIVE'" >&2; exit 2 ;;
esac
EXTRA=()
if [ "${1:-}" = "--dry-run" ]; then
  OUT=$(mktemp -d)/reference
  STEPS=4
  EXTRA=(--no-metrics --no-images --checkpoint-every 2 --eval-every 0)
  echo "train_reference: dry run, $STEPS steps into $OUT"
fi
RECIPE=(--objective "$OBJECTIVE" --gamma 35 --batch-size 64 --z-dim 10 --lr-vae 1e-4 --lr-d 1e-4
        --disc-depth 6 --disc-width 1000 --seed "$SEED" --device cpu --backend auto
        --checkpoint-every 1000 --log-every 50 --eval-every 5000 --metrics-preset fast
        --threads "$THREADS")
RESUME=()
if [ -f "$OUT/checkpoint.pt" ]; then RESUME=(--resume); fi
mkdir -p "$OUT"
# One provenance line per training segment (the code, the machine, the threads): the model card
# (scripts/export_reference.py) lists them, as a resumed run may span commits and machines.
COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -c . || true)
CPU=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
printf '{"started": "%s", "commit": "%s", "dirty_files": %s, "cpu": "%s", "threads": %s, "resume": %s}\n' \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$COMMIT" "${DIRTY:-0}" "$CPU" "$THREADS" \
  "$([ ${#RESUME[@]} -gt 0 ] && echo true || echo false)" >> "$OUT/provenance.jsonl"
exec "$PYTHON" -m fastfvae.cli train --steps "$STEPS" --out "$OUT" "${RECIPE[@]}" "${RESUME[@]}" "${EXTRA[@]}"
