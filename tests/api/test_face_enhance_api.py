"""super_resolution with face_enhance through HTTP: the real upscale engine and a GFPGAN restorer on seeded
official-layout weights, the face restored in the upscaled image and the reply's meta saying so."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from sdserver.auth import Role
from sdserver.engines.factory import build_engines
from sdserver.engines.restore.tiny import write_restorer_weights
from sdserver.engines.upscale.tiny import write_official_weights
from tests.engines.restore.faces import face_on_canvas
from tests.support.live_server import LiveServer, make_settings, run_server, worker_thread

SR = "/api/v6/image_editing/super_resolution"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    write_official_weights(tmp_path / "models" / "upscalers", "realesr-general-x4v3", "params")
    write_restorer_weights(tmp_path / "models" / "face_restorers", "gfpgan-1.4", seed=5)
    settings = make_settings(tmp_path, engines=["upscale"], sync_wait_s=120.0, worker_poll_s=0.05)
    with run_server(settings) as live:
        services = live.services
        with worker_thread(live, build_engines(services.settings, services.objects), "w1", join_s=60.0):
            yield live


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_face_enhance_restores_the_face_in_the_upscaled_image(server: LiveServer) -> None:
    source, (x, y, w, h) = face_on_canvas(0, 0, size=(176, 176))
    key = server.new_key(Role.USER)
    with httpx.Client(timeout=180) as http:
        body = {"key": key, "init_image": _png(source), "scale": 2}
        plain = http.post(server.url(SR), json=body).json()
        enhanced = http.post(server.url(SR), json={**body, "face_enhance": True}).json()
        assert plain["status"] == enhanced["status"] == "success", enhanced
        [plain_url], [enhanced_url] = plain["output"], enhanced["output"]
        before = np.asarray(Image.open(io.BytesIO(http.get(plain_url).content))).astype(int)
        after = np.asarray(Image.open(io.BytesIO(http.get(enhanced_url).content))).astype(int)
    assert after.shape == before.shape == (352, 352, 3)
    assert np.abs(after - before)[y * 2 : (y + h) * 2, x * 2 : (x + w) * 2].mean() > 10
    assert enhanced["meta"]["face_restorer"] == "gfpgan-1.4" and enhanced["meta"]["faces_restored"] == 1
    assert enhanced["meta"]["face_enhance"] == "yes"
