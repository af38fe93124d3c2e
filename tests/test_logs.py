"""Process logging: JSON lines, an access log without query strings, fetch polling at debug, silenced warnings;
and a real `sdserver serve --log-format json` whose log never shows a key sent as `?key=`."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sdserver.logs import AccessLogFilter, JsonFormatter, configure_logging, silence_harmless_warnings
from tests.support.live_server import free_port
from tests.test_cli import SDSERVER, _clean_env

SECRET = "operator-admin-key-0123456789"


def access_record(path: str, status: int = 200) -> logging.LogRecord:
    return logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", path, "1.1", status), None,
    )  # fmt: skip


@pytest.fixture
def access_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("uvicorn.access")
    level = logger.level
    yield logger
    logger.setLevel(level)


def test_the_access_log_shows_the_path_without_its_query(access_logger: logging.Logger) -> None:
    record = access_record(f"/api/v3/text2img?key={SECRET}&x=1")
    assert AccessLogFilter().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "POST /api/v3/text2img HTTP/1.1" 200'


def test_fetch_polling_is_logged_only_at_debug_level(access_logger: logging.Logger) -> None:
    access_logger.setLevel(logging.INFO)
    polled = access_record("/api/v6/images/fetch/12")
    assert not AccessLogFilter().filter(polled)
    access_logger.setLevel(logging.DEBUG)
    polled = access_record("/api/v6/images/fetch/12")
    assert AccessLogFilter().filter(polled) and polled.levelno == logging.DEBUG


def test_json_lines_carry_time_level_logger_message_and_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("sdserver.x", logging.ERROR, __file__, 1, "job %s failed", (7,), sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "error" and entry["logger"] == "sdserver.x" and entry["message"] == "job 7 failed"
    assert entry["time"].endswith("+00:00") and "ValueError: boom" in entry["exception"]


def test_transformers_torchvision_fallback_warning_is_silenced(caplog: pytest.LogCaptureFixture) -> None:
    silence_harmless_warnings()
    logger = logging.getLogger("transformers.utils.import_utils")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("`CLIPImageProcessor` requires torchvision (not installed); falling back to ...")
        logger.warning("some other warning")
    assert [record.getMessage() for record in caplog.records] == ["some other warning"]


def test_configure_logging_is_idempotent() -> None:
    configure_logging("info", "json")
    configure_logging("info", "text")
    assert sum(isinstance(f, AccessLogFilter) for f in logging.getLogger("uvicorn.access").filters) == 1


def test_serve_writes_json_lines_and_never_logs_a_key_from_the_query(tmp_path: Path) -> None:
    port = free_port()
    log_file = tmp_path / "serve.log"
    with log_file.open("w") as sink:
        process = subprocess.Popen(
            [*SDSERVER, "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"), "--workers", "0",
             "--log-format", "json"],
            stdout=subprocess.DEVNULL, stderr=sink, text=True, env=_clean_env(SDSERVER_ADMIN_KEY=SECRET),
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            reply = httpx.post(base + "/api/v3/system_details", params={"key": SECRET}, json={}).json()
            assert reply.get("status") != "error", reply
        finally:
            process.terminate()
            process.wait(timeout=10)
    lines = log_file.read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert any("/healthz" in entry["message"] for entry in entries), lines
    assert any("system_details" in entry["message"] for entry in entries)
    assert SECRET not in log_file.read_text()
