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
# The playground's browser test drives Debian's chromium through Playwright (no browser download works offline).
if [[ ",${1:-}," == *",test,"* ]] && [ ! -x /usr/bin/chromium ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
        echo "installing chromium (Debian package) for the browser tests"
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
            echo "WARNING: 'apt-get install chromium' failed: the playground's browser test will fail until it is installed." >&2
        fi
    else
        echo "WARNING: /usr/bin/chromium is missing and cannot be installed here (needs apt-get and root)." >&2
        echo "WARNING: run 'sudo apt-get install -y chromium', or tests/api/test_playground_browser.py is skipped." >&2
    fi
fi
