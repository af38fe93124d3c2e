#!/usr/bin/env bash
# Creates .venv (if missing) and installs sdserver into it. Usage: scripts/install.sh [extra]  (extra: test)
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python_bin" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
target="."
if [ "${1:-}" != "" ]; then
    target=".[$1]"
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$target"
