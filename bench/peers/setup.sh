#!/usr/bin/env bash
# Create .venv-peers (git-ignored) with the peers that `gmcf-batch evaluate --methods ...` can
# measure beside GMCF and GDL: DiCE (random, genetic) and alibi's CounterfactualRL (torch
# backend). TensorFlow < 2.15 for alibi's CounterfactualProto is tried last and may fail.
#     bash bench/peers/setup.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${PEERS_VENV:-$ROOT/.venv-peers}"
PYTHON="${PYTHON:-python3}"
cd "$ROOT"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
# The CPU build first: alibi's torch backend must not pull a CUDA build of torch.
"$PIP" install -q torch==2.13.0
"$PIP" install -q -r bench/peers/requirements.txt
# The project's runtime (no extras): the peers' rows are scored with the project's own code.
"$PIP" install -q -e .
if "$PIP" install -q 'tensorflow-cpu<2.15'; then
    echo "tensorflow-cpu installed: CounterfactualProto (method 'prototype') is available"
else
    echo "tensorflow-cpu<2.15 did not install: method 'prototype' is unavailable" >&2
fi
"$VENV/bin/python" -c "import dice_ml, alibi, onnxruntime, gmcf.runtime; print('peers environment ready:', '$VENV')"
