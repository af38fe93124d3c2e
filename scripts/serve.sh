#!/usr/bin/env bash
# One command for a fresh machine: install, then serve on the embedded default (SQLite + local folder).
# Any flags go to `sdserver serve`, e.g. scripts/serve.sh --port 9000 --data-dir /srv/sd
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh worker
exec .venv/bin/sdserver serve "$@"
