"""`models make-tiny-upscaler`: seeded weights in the published layout, where the upscale engine finds them."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from sdserver.auth import Role
from sdserver.catalog.registry import ModelKind, ModelRegistry, ModelState
from sdserver.cli import main
from sdserver.database import create_db_engine
from sdserver.engines.factory import build_engines
from sdserver.engines.upscale.engine import weights_folder
from tests.support.image_files import png_bytes
from tests.support.live_server import make_settings, run_server, worker_thread


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("SDSERVER_")]:
        monkeypatch.delenv(name)


def test_make_tiny_upscaler_writes_the_published_layout_and_an_upscale_job_succeeds(
    tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "make-tiny-upscaler", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "not real upscales" in out
    settings = make_settings(tmp_path, engines=["upscale"], sync_wait_s=30.0, worker_poll_s=0.05)
    path = weights_folder(settings) / "realesr-general-x4v3.pth"
    assert str(path) in out
    # realesr-general-x4v3 is published as {"params": state dict}.
    assert list(torch.load(path, map_location="cpu", weights_only=True)) == ["params"]
    engine = create_db_engine(settings.sql_url)
    record = ModelRegistry(engine).get(ModelKind.UPSCALER, "realesr-general-x4v3")
    engine.dispose()
    assert record is not None and record.state is ModelState.READY

    with run_server(settings) as live:
        services = live.services
        with worker_thread(live, build_engines(services.settings, services.objects), "w1", join_s=30.0):
            reply = httpx.post(
                live.url("/api/v6/image_editing/super_resolution"),
                json={"key": live.new_key(Role.USER), "init_image": base64.b64encode(png_bytes(24, 16)).decode()},
                timeout=60,
            ).json()
            assert reply["status"] == "success", reply
            picture = httpx.get(reply["output"][0], timeout=30).content
    assert Image.open(io.BytesIO(picture)).size == (96, 64)


def test_make_tiny_upscaler_refuses_an_unknown_id(clean_env: None, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["models", "make-tiny-upscaler", "my-upscaler", "--data-dir", str(tmp_path)])
    assert exited.value.code == 2
    assert not (tmp_path / "models").exists()
