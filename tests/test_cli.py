"""The `sdserver` command as a newcomer runs it: keys management, and `serve` on the embedded default."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.image_files import png_bytes
from tests.support.live_server import free_port

SDSERVER = [sys.executable, "-m", "sdserver.cli"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SDSERVER, *args], capture_output=True, text=True, timeout=60, env=env or _clean_env())


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDSERVER_")}
    env.update(extra)
    return env


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    created = run_cli("keys", "create", "--name", "my app", "--data-dir", str(tmp_path))
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("sd_") and len(secret) > 30
    admin = run_cli("keys", "create", "--name", "ops", "--admin", "--data-dir", str(tmp_path))
    assert admin.returncode == 0
    listed = run_cli("keys", "list", "--data-dir", str(tmp_path))
    assert "my app" in listed.stdout and "ops" in listed.stdout and "admin" in listed.stdout
    assert secret not in listed.stdout
    revoked = run_cli("keys", "revoke", "1", "--data-dir", str(tmp_path))
    assert revoked.returncode == 0 and "revoked key #1" in revoked.stdout
    missing = run_cli("keys", "revoke", "42", "--data-dir", str(tmp_path))
    assert missing.returncode == 2 and "No key with id 42" in missing.stderr


class Served:
    def __init__(self, process: subprocess.Popen[str], base_url: str):
        self.process = process
        self.base_url = base_url


def _start(data_dir: Path, env: dict[str, str]) -> Served:
    port = free_port()
    process = subprocess.Popen(
        [*SDSERVER, "serve", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(base_url + "/healthz", timeout=1).status_code == 200:
                return Served(process, base_url)
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError("sdserver serve exited early")
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("sdserver serve did not become ready")


@pytest.fixture
def stop_all() -> Iterator[list[subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


def test_serve_prints_a_first_admin_key_once_and_serves_uploads(
    tmp_path: Path, stop_all: list[subprocess.Popen[str]]
) -> None:
    served = _start(tmp_path, _clean_env())
    stop_all.append(served.process)
    assert served.process.stdout is not None
    first_line = served.process.stdout.readline()
    assert "Admin API key" in first_line
    key = first_line.strip().rsplit(" ", 1)[-1]
    original = png_bytes(12, 9)
    reply = httpx.post(
        served.base_url + "/api/v1/enterprise/upload_image",
        json={"key": key, "base64_image": base64.b64encode(original).decode()},
    ).json()
    assert reply["status"] == "success"
    assert reply["image_url"].startswith(served.base_url + "/files/uploads/")
    assert httpx.get(reply["image_url"]).content == original
    served.process.terminate()
    served.process.wait(timeout=10)

    # A second start on the same data dir has keys already: nothing new is created or printed.
    again = _start(tmp_path, _clean_env())
    stop_all.append(again.process)
    again.process.terminate()
    out, _ = again.process.communicate(timeout=10)
    assert "Admin API key" not in out
    listed = run_cli("keys", "list", "--data-dir", str(tmp_path))
    assert listed.stdout.count("admin (first start)") == 1


def test_serve_installs_the_admin_key_from_the_environment(
    tmp_path: Path, stop_all: list[subprocess.Popen[str]]
) -> None:
    env = _clean_env(SDSERVER_ADMIN_KEY="operator-admin-key-0123456789")
    served = _start(tmp_path, env)
    stop_all.append(served.process)
    reply = httpx.post(
        served.base_url + "/api/v6/base64_to_url",
        json={
            "key": "operator-admin-key-0123456789",
            "base64_string": base64.b64encode(png_bytes()).decode(),
        },
    ).json()
    assert reply["status"] == "success"
    served.process.terminate()
    out, _ = served.process.communicate(timeout=10)
    assert "operator-admin-key" not in out


def test_models_make_tiny_writes_a_loadable_model_and_registers_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # In-process: the subcommand imports torch, which other tests in the session have usually loaded already.
    from sdserver.catalog.layout import ModelFormat, find_model
    from sdserver.catalog.registry import ModelKind, ModelRegistry, ModelState
    from sdserver.cli import main
    from sdserver.config import Settings
    from sdserver.database import create_db_engine

    for name in [name for name in os.environ if name.startswith("SDSERVER_")]:
        monkeypatch.delenv(name)
    assert main(["models", "make-tiny", "tiny-demo", "--data-dir", str(tmp_path)]) == 0
    assert "noise" in capsys.readouterr().out
    source = find_model(tmp_path / "models", "tiny-demo")
    assert source is not None and source.format is ModelFormat.DIFFUSERS
    engine = create_db_engine(Settings(data_dir=tmp_path).sql_url)
    record = ModelRegistry(engine).get(ModelKind.CHECKPOINT, "tiny-demo")
    engine.dispose()
    assert record is not None and record.state is ModelState.READY and record.format == "diffusers"
    assert main(["models", "make-tiny", "../escape", "--data-dir", str(tmp_path)]) == 2
    assert "not a valid model id" in capsys.readouterr().err


def test_models_make_tiny_honours_the_models_dir_and_publishes_to_the_object_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sdserver.catalog.layout import find_model
    from sdserver.catalog.manifests import ManifestStore
    from sdserver.catalog.registry import ModelKind
    from sdserver.cli import main
    from sdserver.config import Settings
    from sdserver.database import create_db_engine

    for name in [name for name in os.environ if name.startswith("SDSERVER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SDSERVER_MODELS_DIR", str(tmp_path / "shared"))
    monkeypatch.setenv("SDSERVER_MODELS_IN_OBJECT_STORE", "yes")
    assert main(["models", "make-tiny", "pub", "--data-dir", str(tmp_path / "data")]) == 0

    assert find_model(tmp_path / "shared", "pub") is not None
    assert not (tmp_path / "data" / "models").exists()
    engine = create_db_engine(Settings(data_dir=tmp_path / "data").sql_url)
    published = ManifestStore(engine).lookup(ModelKind.CHECKPOINT, "pub")
    engine.dispose()
    assert published is not None and published.manifest is not None
    blobs = tmp_path / "data" / "objects" / "models" / "sha256"
    assert {file.sha256 for file in published.manifest.files} <= {blob.name for blob in blobs.iterdir()}


def test_models_make_tiny_writes_each_family_in_either_form_and_says_what_it_detected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sdserver.catalog.layout import ModelFormat, find_model
    from sdserver.catalog.registry import ModelKind, ModelRegistry, ModelState
    from sdserver.cli import main
    from sdserver.config import Settings
    from sdserver.database import create_db_engine

    for name in [name for name in os.environ if name.startswith("SDSERVER_")]:
        monkeypatch.delenv(name)
    data_dir = ["--data-dir", str(tmp_path)]
    assert main(["models", "make-tiny", "xl", "--family", "sdxl", "--single-file", "--seed", "3", *data_dir]) == 0
    out = capsys.readouterr().out
    assert "wrote tiny sdxl model 'xl'" in out and "detected family: sdxl (prediction: epsilon)" in out
    assert main(["models", "make-tiny", "v", "--family", "sd2v", *data_dir]) == 0
    assert "detected family: sd2 (prediction: v_prediction)" in capsys.readouterr().out
    assert main(["models", "make-tiny", "flux", "--family", "flux", "--single-file", *data_dir]) == 2
    assert "--single-file: tiny Flux models are folders only" in capsys.readouterr().err

    checkpoint, folder = find_model(tmp_path / "models", "xl"), find_model(tmp_path / "models", "v")
    assert checkpoint is not None and checkpoint.format is ModelFormat.SINGLE_FILE and checkpoint.config_dir
    assert folder is not None and folder.format is ModelFormat.DIFFUSERS
    # The default family's VAE downsamples 8x, like a real SD 1.5 VAE.
    assert main(["models", "make-tiny", "plain", *data_dir]) == 0
    vae = json.loads((tmp_path / "models/diffusers/plain/vae/config.json").read_text())
    assert len(vae["block_out_channels"]) == 4

    engine = create_db_engine(Settings(data_dir=tmp_path).sql_url)
    registry = ModelRegistry(engine)
    xl, flux = registry.get(ModelKind.CHECKPOINT, "xl"), registry.get(ModelKind.CHECKPOINT, "flux")
    engine.dispose()
    assert xl is not None and xl.state is ModelState.READY and xl.format == "safetensors"
    assert xl.source == "sdserver models make-tiny --family sdxl --single-file --seed 3"
    assert flux is None
