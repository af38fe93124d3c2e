#!/usr/bin/env bash
# Creates .venv (if missing) and installs sdserver into it. Usage: scripts/install.sh [extras]
# (extras: worker, test — comma-separated; test includes worker)
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
    # torch first and by exact version (the extras pin the same): the local CPU wheel satisfies it,
    # so no other package can pull the registry's CUDA build.
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$target"
