"""scripts/device-check.sh passes on a machine without CUDA: the GPU tests skip, the GPU benchmarks are left out,
and the machine description it writes says so."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_device_check_passes_without_cuda_and_describes_the_machine(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        return  # on a GPU machine the script does real work; this test is about the CPU path
    env = {**os.environ, "OUT": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "device-check.sh")], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((tmp_path / "device.json").read_text())["cuda"] is False
    log = (tmp_path / "gpu-tests.log").read_text()
    assert "skipped" in log and "failed" not in log
    assert not (tmp_path / "latest.json").exists()  # no GPU benchmarks on a CPU
