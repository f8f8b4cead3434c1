#!/usr/bin/env bash
# The test command (README, .ci/run): install into ./.venv, the static checks, then the tests --
# the fast `unit` tier first so a broken basic fails in seconds, the core again on transformers 5.x, then the
# tiny-model and slow tiers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff check"; .venv/bin/ruff check .
echo "== ruff format --check"; .venv/bin/ruff format --check .
echo "== mypy"; .venv/bin/mypy
echo "== pytest: unit tier"; .venv/bin/python -m pytest -q -m unit
# the core on the transformers 5.x line, in its own venv without the extras (docs/install.md): the core
# packages' unit tests and every core command end to end on a tiny pair (marker core)
bash scripts/setup_core5.sh
echo "== pytest (transformers 5.x, .venv-tf5): core unit tier and core commands"
.venv-tf5/bin/python -m pytest -q -m "unit or core" tests/test_layering.py tests/hcnr tests/models tests/commands \
  tests/evaluation tests/probe
echo "== pytest: tiny and slow tiers"; .venv/bin/python -m pytest -q -m "not unit"
