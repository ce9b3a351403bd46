#!/usr/bin/env bash
# Rebuild and reinstall the native libraries (CPU, and CUDA when nvcc exists) into the active
# environment, serialised with a lock so that parallel rebuilds do not collide. Prints CMake's
# warnings (a failed CUDA build is a warning, not an error: read them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
exec 9>/tmp/fastfvae-build.lock
flock 9
log=$(mktemp)
if ! "$PY" -m pip install --no-build-isolation --no-deps -e . -v >"$log" 2>&1; then
  tail -60 "$log"; echo "rebuild_native: FAILED"; exit 1
fi
grep -E -A6 "warning|error|Warning|FAILED" "$log" | grep -v -E "^\s*$|Looking in|WARNING: Location" | head -80 || true
echo "rebuild_native: ok ($(ls "$("$PY" -c 'import importlib.resources as r; print(r.files("fastfvae") / "_lib")')" | tr '\n' ' '))"
