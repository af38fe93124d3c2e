"""Runs the atheris image-input fuzz target for a fixed budget: no crash, memory under the cap, executions shown.

SDSERVER_FUZZ_SECONDS sets the budget (default 20 s); a long run is e.g. SDSERVER_FUZZ_SECONDS=3600.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sdserver.errors import NotBase64Error
from sdserver.images import decode_base64_payload

TARGET = Path(__file__).with_name("fuzz_image_input.py")
SECONDS = int(os.environ.get("SDSERVER_FUZZ_SECONDS", "20"))
# Production limits allow a 6000x6000 RGBA decode (~144 MB) plus Pillow's working copies.
RSS_LIMIT_MB = 2048


@pytest.mark.timeout(SECONDS + 180)
def test_image_input_survives_coverage_guided_fuzzing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    command = [
        sys.executable,
        str(TARGET),
        f"-max_total_time={SECONDS}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        "-timeout=30",
        f"-artifact_prefix={tmp_path}/",
    ]
    # Through a shell that forks it: Linux keeps a process's peak RSS across execve, so a fuzzer exec'd straight
    # from this (large, model-holding) pytest process would start with pytest's peak and trip -rss_limit_mb at once.
    forked = ["/bin/sh", "-c", '"$0" "$@"; exit $?', *command]
    done = subprocess.run(forked, capture_output=True, text=True, timeout=SECONDS + 120, cwd=tmp_path, check=False)
    log = done.stderr + done.stdout
    crashes = sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(("crash-", "oom-", "timeout-")))
    assert done.returncode == 0 and not crashes, f"fuzzing found {crashes}:\n{log[-6000:]}"
    runs = re.search(r"Done (\d+) runs in (\d+) second", log)
    assert runs is not None, log[-3000:]
    peak = max((int(mb) for mb in re.findall(r"rss: (\d+)Mb", log)), default=0)
    instrumented = "instrumented: True" in log
    with capsys.disabled():  # the figure belongs in the normal test output, not only with -s
        print(
            f"\natheris image input: {runs.group(1)} executions in {runs.group(2)} s, peak RSS {peak} MB "
            f"(cap {RSS_LIMIT_MB} MB), coverage-instrumented: {instrumented}"
        )
    assert int(runs.group(1)) > 100


@pytest.mark.parametrize("text", ["iVBORw0K\u00e9\u00e9", "\u00b7", "data:image/png;base64,\u2603"])
def test_non_ascii_base64_is_a_clear_error(text: str) -> None:
    """The first crash the target found: b64decode raised a bare ValueError on non-ASCII text (an HTTP 500)."""
    with pytest.raises(NotBase64Error) as caught:
        decode_base64_payload(text, field="init_image", max_bytes=1024)
    assert caught.value.field == "init_image"
