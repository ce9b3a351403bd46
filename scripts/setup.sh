#!/usr/bin/env bash
# Create ./.venv and install fastfvae (building its native libraries) with the test extras.
# torch is pinned to the CPU wheel that machines of this project carry (torch==2.13.0): an
# unpinned torch would pull a multi-GB CUDA build. On a CUDA machine, set FASTFVAE_TORCH to the
# torch you want (e.g. FASTFVAE_TORCH="torch" to keep the one already installed).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC=${FASTFVAE_TORCH:-torch==2.13.0}
TRITON_SPEC=${FASTFVAE_TRITON:-triton==3.6.0}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
echo "setup: installing $TORCH_SPEC $TRITON_SPEC"
.venv/bin/python -m pip install -q "$TORCH_SPEC" "$TRITON_SPEC"
echo "setup: building and installing fastfvae (native CPU library; CUDA library when nvcc exists)"
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -c "import fastfvae, fastfvae.backends as b; import torch; print('setup: fastfvae', fastfvae.__version__, '| torch', torch.__version__, '| backends on cpu:', {n: (r or 'ok') for n, r in b.reasons('permute_dims', torch.device('cpu'), torch.float32).items()})"
