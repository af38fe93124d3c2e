#!/usr/bin/env bash
# One command for a fresh machine: install with test extras, lint, type-check, run the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k uploads
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh test
.venv/bin/ruff check src tests
.venv/bin/ruff format --check src tests
.venv/bin/mypy
exec .venv/bin/pytest "$@"
