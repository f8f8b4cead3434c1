#!/usr/bin/env bash
# A second, core-only venv, ./.venv-tf5, on the transformers 5.x line (idempotent, package registries only):
# the CPU build of torch, the newest transformers 5.x on the index, and the package with its [test-core]
# extra -- no [onnx] (optimum-onnx pins transformers<4.58) and no [gguf]. scripts/test.sh runs the core
# tests in it, so CI covers both transformers lines (docs/install.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-tf5
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[test-core]" "transformers>=5,<6"
