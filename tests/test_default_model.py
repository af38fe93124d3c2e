"""The default model: set by the first `models make-tiny`, read by a running server per request, and
SDSERVER_DEFAULT_MODEL_ID winning over it, so legacy v3 clients that send no `model_id` work."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdserver.auth import Role
from sdserver.cli import main
from sdserver.database import create_db_engine
from sdserver.jobstore.control import ControlStore
from tests.support.live_server import LiveServer, make_settings, run_server


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("SDSERVER_")]:
        monkeypatch.delenv(name)


def text2img(live: LiveServer, key: str, **fields: Any) -> dict[str, Any]:
    """A v3 text2img as legacy clients send it (no model_id), queued without waiting for a worker."""
    body = {"key": key, "prompt": "a red house", "width": 64, "height": 64, "instant_response": "yes", **fields}
    reply: dict[str, Any] = httpx.post(live.url("/api/v3/text2img"), json=body, timeout=30).json()
    return reply


def queued_model(live: LiveServer, reply: dict[str, Any]) -> str:
    assert reply["status"] == "processing", reply
    return live.services.jobs.get(int(reply["id"]), owner_key_id=None).model_id


@pytest.fixture
def running(tmp_path: Path, clean_env: None) -> Iterator[LiveServer]:
    with run_server(make_settings(tmp_path)) as live:
        yield live


def test_a_running_server_uses_the_default_the_first_make_tiny_sets(
    running: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = running.new_key(Role.USER)
    before = text2img(running, key)
    assert before["status"] == "error"
    assert "model_id" in before["message"] and "SDSERVER_DEFAULT_MODEL_ID" in before["message"]

    assert main(["models", "make-tiny", "first", "--data-dir", str(tmp_path)]) == 0
    assert "'first' is now the default model" in capsys.readouterr().out
    assert main(["models", "make-tiny", "second", "--data-dir", str(tmp_path)]) == 0
    assert "the default model stays 'first'" in capsys.readouterr().out

    # No restart: the server reads the persisted default per request.
    assert queued_model(running, text2img(running, key)) == "first"
    # A request that names its model still gets that model.
    assert queued_model(running, text2img(running, key, model_id="second")) == "second"


def test_the_environment_default_wins_over_the_persisted_one(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data-dir", str(tmp_path)]
    assert main(["models", "make-tiny", "first", *data]) == 0
    monkeypatch.setenv("SDSERVER_DEFAULT_MODEL_ID", "second")
    assert main(["models", "make-tiny", "second", *data]) == 0
    assert "the default model stays 'second' (SDSERVER_DEFAULT_MODEL_ID)" in capsys.readouterr().out
    # The persisted default is left alone: unset the variable and it applies again.
    engine = create_db_engine(make_settings(tmp_path).sql_url)
    assert ControlStore(engine).load_default_model() == "first"
    engine.dispose()

    with run_server(make_settings(tmp_path, default_model_id="second")) as live:
        assert queued_model(live, text2img(live, live.new_key(Role.USER))) == "second"
