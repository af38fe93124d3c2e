#!/usr/bin/env bash
# The GPU check: the `gpu`-marked tests (real CUDA runs of every engine, OOM handling) and the GPU benchmark sizes,
# results as JSON/JUnit under $OUT (the device tool's output folder) or bench/results/device/. Sized for < 8 minutes
# on one CUDA GPU. On a machine without CUDA the GPU tests skip and the benchmarks are left out; it still passes.
#
#   scripts/device-check.sh              # tests + benchmarks
#   scripts/device-check.sh --tests-only
#
# Python: .venv/bin/python when there is one (scripts/install.sh test), else python3 with the project's needs on
# PYTHONPATH. Wheels in .whl/ (ignored by git; see docs/gpu.md) are unpacked to /tmp/sdserver-site first: the device
# machine reaches no package registry, so what its image lacks travels with the tree.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/bench/results/device}"
mkdir -p "$out"
python_bin=python3
[ -x .venv/bin/python ] && python_bin=.venv/bin/python
# Only where there is no venv: the wheels are for the device machine's own Python (3.12).
if [ ! -x .venv/bin/python ] && [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
    "$python_bin" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/sdserver-site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/sdserver-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
"$python_bin" - <<'EOF' | tee "$out/device.json"
import json, platform, torch
cuda = torch.cuda.is_available()
print(json.dumps({
    "python": platform.python_version(), "torch": torch.__version__, "cuda": cuda,
    "device": torch.cuda.get_device_name(0) if cuda else "cpu",
    "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
}))
EOF
status=0
# --noconftest: the GPU tests need none of the session servers (PostgreSQL, S3) the root conftest starts.
"$python_bin" -m pytest -q -p no:cacheprovider --noconftest -m gpu tests/gpu --junitxml "$out/gpu-tests.xml" \
    2>&1 | tee "$out/gpu-tests.log" || status=1
if [ "${1:-}" != "--tests-only" ] && "$python_bin" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    # P1 (round trip through the API, 512², 25 steps), P8 (precision) and P9 (batching: 16 jobs on vs off) at GPU sizes.
    "$python_bin" -m bench --only P1,P8,P9 --no-charts --out "$out" 2>&1 | tee "$out/bench.log" || status=1
fi
exit $status
