"""One data dir for every command, and the warning when `keys`/`models` would start an empty store while a
server runs on another data dir (found through the record each `serve` leaves)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from sdserver.cli import main
from sdserver.config import Settings
from sdserver.running_servers import data_dir_warning, records_dir, running_servers, server_record
from tests.support.live_server import free_port, make_settings, run_server


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("SDSERVER_")]:
        monkeypatch.delenv(name)


def test_every_command_resolves_the_data_dir_flag_then_environment_then_default(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["keys", "create", "--name", "default"]) == 0
    assert (tmp_path / "data" / "sdserver.db").is_file()
    monkeypatch.setenv("SDSERVER_DATA_DIR", str(tmp_path / "from-env"))
    assert main(["keys", "create", "--name", "env"]) == 0
    assert main(["keys", "create", "--name", "flag", "--data-dir", str(tmp_path / "from-flag")]) == 0
    capsys.readouterr()
    assert main(["keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert " env" in listed and "flag" not in listed and "default" not in listed
    assert main(["keys", "list", "--data-dir", str(tmp_path / "from-flag")]) == 0
    assert "flag" in capsys.readouterr().out
    # The flag may also come before the command.
    assert main(["--data-dir", str(tmp_path / "from-flag"), "keys", "list"]) == 0
    assert "flag" in capsys.readouterr().out


def test_records_live_in_the_configured_folder_else_under_xdg_state_home(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert records_dir(Settings(servers_dir=tmp_path / "mine")) == tmp_path / "mine"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert records_dir(Settings()) == tmp_path / "state" / "sdserver" / "servers"


def test_a_server_record_lasts_as_long_as_the_server_and_stale_ones_are_dropped(
    tmp_path: Path, clean_env: None
) -> None:
    servers = tmp_path / "servers"
    settings = make_settings(tmp_path / "data", servers_dir=servers)
    settings.data_dir.mkdir()
    with run_server(settings), server_record(settings) as path:
        assert path is not None and path.is_file()
        [record] = running_servers(settings)
        assert record.url == settings.external_base_url
        assert record.data_dir == str((tmp_path / "data").resolve()) and record.sqlite
    assert not list(servers.iterdir())
    # A process that is gone (a crash) leaves a record behind; the next look removes it.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = servers / f"{dead.pid}.json"
    stale.write_text(json.dumps({"pid": dead.pid, "url": "http://127.0.0.1:9", "data_dir": "/x", "sqlite": True}))
    assert running_servers(settings) == []
    assert not stale.exists()


def test_keys_on_an_empty_data_dir_warn_where_the_running_server_keeps_its_data(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    servers = tmp_path / "servers"
    monkeypatch.setenv("SDSERVER_SERVERS_DIR", str(servers))
    served = make_settings(tmp_path / "served", servers_dir=servers)
    served.data_dir.mkdir()
    with run_server(served), server_record(served):
        assert main(["keys", "list", "--data-dir", str(tmp_path / "elsewhere")]) == 0
        warning = capsys.readouterr().err
        assert "holds no database" in warning and served.external_base_url in warning
        assert f"--data-dir {(tmp_path / 'served').resolve()}" in warning
        # Once the data dir has its database, or on the server's own data dir, nothing is said.
        assert main(["keys", "list", "--data-dir", str(tmp_path / "elsewhere")]) == 0
        assert capsys.readouterr().err == ""
        assert data_dir_warning(make_settings(tmp_path / "served", servers_dir=servers)) is None
    # No server running: nothing to warn about.
    assert data_dir_warning(make_settings(tmp_path / "third", servers_dir=servers)) is None


def test_a_server_on_another_database_is_named_too(tmp_path: Path, clean_env: None, postgres_url: str) -> None:
    servers = tmp_path / "servers"
    served = make_settings(tmp_path / "served", servers_dir=servers, database_url=postgres_url)
    served.data_dir.mkdir()
    with run_server(served), server_record(served):
        warning = data_dir_warning(make_settings(tmp_path / "served", servers_dir=servers))
    assert warning is not None and "set the same SDSERVER_DATABASE_URL here" in warning


def test_sdserver_serve_leaves_a_record_that_a_cli_command_elsewhere_reports(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SDSERVER_")}
    env.update(SDSERVER_SERVERS_DIR=str(tmp_path / "servers"), SDSERVER_WORKERS="0")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "sdserver.cli", "serve", "--port", str(port), "--data-dir", str(tmp_path / "srv")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not list((tmp_path / "servers").glob("*.json")) or not _healthy(port):
            assert server.poll() is None and time.monotonic() < deadline, "sdserver serve did not start"
            time.sleep(0.1)
        elsewhere = subprocess.run(
            [sys.executable, "-m", "sdserver.cli", "keys", "create", "--name", "lost"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert elsewhere.returncode == 0 and elsewhere.stdout.startswith("sd_"), elsewhere.stderr
        assert f"SDSERVER_DATA_DIR={(tmp_path / 'srv').resolve()}" in elsewhere.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert not list((tmp_path / "servers").glob("*.json"))


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
