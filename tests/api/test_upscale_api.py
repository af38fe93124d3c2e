"""Super resolution through HTTP: input checks, replies on every path, and the real Real-ESRGAN engine."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from sdserver.api.aliases import SUPER_RESOLUTION_LIST_PATHS, SUPER_RESOLUTION_STRING_PATHS
from sdserver.auth import Role
from sdserver.engines.factory import build_engines
from sdserver.engines.upscale.tiny import write_official_weights
from tests.support.image_files import png_bomb, png_bytes
from tests.support.live_server import LiveServer, make_settings, run_server, worker_thread

SR = "/api/v1/enterprise/super_resolution"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def upscaler(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    """A live API and a worker thread running the real upscale engine on seeded random official weights."""
    marker = request.node.get_closest_marker("settings")
    overrides = {
        "engines": ["upscale"],
        "sync_wait_s": 20.0,
        "worker_poll_s": 0.05,
        "max_upscale_input_pixels": 64 * 64,
        **(marker.kwargs if marker else {}),
    }
    weights = tmp_path / "models" / "upscalers"
    weights.mkdir(parents=True)
    write_official_weights(weights, "realesr-general-x4v3", "params")
    write_official_weights(weights, "RealESRGAN_x2plus", "params_ema")
    with run_server(make_settings(tmp_path, **overrides)) as live:
        services = live.services
        with worker_thread(live, build_engines(services.settings, services.objects), "w1", join_s=30.0):
            yield live


@pytest.fixture
def key(upscaler: LiveServer) -> str:
    return upscaler.new_key(Role.USER)


def post(http: httpx.Client, live: LiveServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    reply: dict[str, Any] = http.post(live.url(path), json=body, timeout=60).json()
    return reply


def test_upload_then_upscale_then_fetch_then_download(upscaler: LiveServer, key: str, http: httpx.Client) -> None:
    uploaded = post(
        http, upscaler, "/api/v1/enterprise/upload_image", {"key": key, "base64_image": b64(png_bytes(20, 12))}
    )
    reply = post(http, upscaler, SR, {"key": key, "url": uploaded["image_url"], "scale": 3, "webhook": None})
    assert reply["status"] == "success", reply
    assert isinstance(reply["output"], str)
    fetched = post(http, upscaler, f"/api/v1/enterprise/fetch/{reply['id']}", {"key": key})
    assert fetched["output"] == reply["output"]
    image = Image.open(io.BytesIO(http.get(reply["output"]).content))
    assert image.format == "PNG" and image.size == (60, 36)
    assert reply["meta"]["model_id"] == "realesr-general-x4v3"


@pytest.mark.parametrize(
    "path", SUPER_RESOLUTION_STRING_PATHS + SUPER_RESOLUTION_LIST_PATHS, ids=lambda p: p.strip("/")
)
def test_output_is_a_string_or_a_list_depending_on_the_path(
    upscaler: LiveServer, key: str, http: httpx.Client, path: str
) -> None:
    reply = post(
        http,
        upscaler,
        path,
        {"key": key, "init_image": b64(png_bytes(8, 8)), "scale": 2, "model_id": "ultra_resolution"},
    )
    assert reply["status"] == "success", reply
    if path in SUPER_RESOLUTION_STRING_PATHS:
        assert isinstance(reply["output"], str)
    else:
        assert isinstance(reply["output"], list) and len(reply["output"]) == 1


def test_x2_model_and_base64_output(upscaler: LiveServer, key: str, http: httpx.Client) -> None:
    reply = post(
        http,
        upscaler,
        "/api/v6/image_editing/super_resolution",
        {
            "key": key,
            "init_image": b64(png_bytes(10, 6)),
            "scale": "2",
            "model_id": "RealESRGAN_x2plus",
            "base64": "yes",
        },
    )
    assert reply["status"] == "success", reply
    image = Image.open(io.BytesIO(base64.b64decode(reply["output"][0])))
    assert image.size == (20, 12)


def test_missing_weights_fail_the_job_saying_where_to_put_them(
    upscaler: LiveServer, key: str, http: httpx.Client
) -> None:
    reply = post(http, upscaler, SR, {"key": key, "url": b64(png_bytes(8, 8)), "model_id": "RealESRGAN_x4plus"})
    assert reply["status"] == "failed", reply
    assert "RealESRGAN_x4plus.pth" in reply["message"] and "models/upscalers" in reply["message"]


def test_face_enhance_is_never_silently_ignored(upscaler: LiveServer, key: str, http: httpx.Client) -> None:
    reply = post(http, upscaler, SR, {"key": key, "url": b64(png_bytes(8, 8)), "face_enhance": True})
    assert reply["status"] == "failed"
    assert "face" in reply["message"].lower()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"scale": 7}, "scale: must be between 1 and 4, got 7.0"),
        ({"model_id": "no-such-upscaler"}, "Model id not found"),
        ({"url": None}, "url: is required (or init_image), got nothing"),
        ({"url": "not an image!"}, "url: not valid base64 or a data URL"),
        ({"url": "http://10.0.0.1/x.png"}, "Unable to fetch image from provided URL"),
        ({"url": "http://169.254.169.254/latest"}, "Unable to fetch image from provided URL"),
    ],
    ids=["scale-7", "unknown-model", "no-url", "not-an-image", "private-url", "metadata-url"],
)
def test_bad_requests_get_their_documented_replies(
    upscaler: LiveServer, key: str, http: httpx.Client, fields: dict[str, Any], message: str
) -> None:
    reply = post(http, upscaler, SR, {"key": key, "url": b64(png_bytes(8, 8)), **fields})
    assert reply["status"] == "error"
    assert reply["message"] == message


def test_inputs_over_the_pixel_cap_and_bombs_are_refused(upscaler: LiveServer, key: str, http: httpx.Client) -> None:
    too_big = post(http, upscaler, SR, {"key": key, "url": b64(png_bytes(65, 64))})
    assert too_big["error_code"] == "image_too_many_pixels"
    bomb = post(http, upscaler, SR, {"key": key, "url": b64(png_bomb(30000))})
    assert bomb["error_code"] == "image_too_many_pixels"


@pytest.mark.settings(sync_wait_s=0.0)
def test_processing_then_fetch_under_the_family_prefix(upscaler: LiveServer, key: str, http: httpx.Client) -> None:
    reply = post(http, upscaler, "/api/v3/super_resolution", {"key": key, "url": b64(png_bytes(8, 8)), "scale": 1})
    assert reply["status"] == "processing"
    assert reply["fetch_result"].startswith(upscaler.url("/api/v3/fetch/"))
    deadline = time.monotonic() + 30
    while (fetched := post(http, upscaler, f"/api/v3/fetch/{reply['id']}", {"key": key}))["status"] != "success":
        assert time.monotonic() < deadline, fetched
        time.sleep(0.1)
    assert isinstance(fetched["output"], str)
    assert Image.open(io.BytesIO(http.get(fetched["output"]).content)).size == (8, 8)
