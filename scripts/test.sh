#!/usr/bin/env bash
# The test command (README, .ci/run): install into ./.venv, the static checks, then the tests --
# the fast `unit` tier first so a broken basic fails in seconds, then the tiny-model and slow tiers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff check"; .venv/bin/ruff check .
echo "== ruff format --check"; .venv/bin/ruff format --check .
echo "== mypy"; .venv/bin/mypy
echo "== pytest: unit tier"; .venv/bin/python -m pytest -q -m unit
echo "== pytest: tiny and slow tiers"; .venv/bin/python -m pytest -q -m "not unit"
