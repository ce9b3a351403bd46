#!/usr/bin/env bash
# Rebuild and reinstall the native libraries (CPU, and CUDA when nvcc exists) into the active
# environment, serialised with a lock so that parallel rebuilds do not collide. Prints CMake's
# warnings (a failed CUDA build is a warning, not an error: read them).
set -euo pipefail
cd "$(dirname "$0")/.."
# The project's .venv (scripts/setup.sh) unless PYTHON names another interpreter.
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python}; fi
exec 9>/tmp/fastfvae-build.lock
flock 9
log=$(mktemp)
# --no-build-isolation builds with the environment's own scikit-build-core (setup.sh's isolated
# build leaves none there): install pyproject's requirement once.
if ! "$PY" -c "import scikit_build_core" 2>/dev/null; then
  "$PY" -m pip install -q "scikit-build-core>=0.10"
fi
if ! "$PY" -m pip install --no-build-isolation --no-deps -e . -v >"$log" 2>&1; then
  tail -60 "$log"; echo "rebuild_native: FAILED"; exit 1
fi
grep -E -A6 "warning|error|Warning|FAILED" "$log" | grep -v -E "^\s*$|Looking in|WARNING: Location" | head -80 || true
echo "rebuild_native: ok ($("$PY" -c 'from fastfvae.backends import native; print(*[str(p) for d in native.library_dirs() for p in sorted(d.glob("*.so"))])'))"
