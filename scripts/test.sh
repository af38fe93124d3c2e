#!/usr/bin/env bash
# One command for a fresh machine: install with test extras, lint, type-check, run the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k uploads
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh test
.venv/bin/ruff check src tests
.venv/bin/ruff format --check src tests
.venv/bin/mypy
# The layout contracts ([tool.importlinter] in pyproject.toml); grimp reads the source tree, not the editable install.
PYTHONPATH=src .venv/bin/lint-imports --no-cache
exec .venv/bin/pytest "$@"
