"""The image-editing endpoints (outpaint, object_removal, inpaint, removebg_mask) and the generation `upscale`
pass through HTTP, on a tiny seeded model, seeded Real-ESRGAN weights and a real worker process."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from modelslab_py.core.apis.image_editing import Image_editing
from modelslab_py.core.client import Client
from modelslab_py.schemas.image_editing import ObjectRemovalSchema, OutpaintingSchema
from PIL import Image

from sdserver.auth import Role
from sdserver.engines.upscale.tiny import write_official_weights
from sdserver.job_params import DEFAULT_GENERATION_UPSCALER
from sdserver.worker.supervisor import WorkerSupervisor
from tests.support.live_server import LiveServer, make_settings, run_server
from tests.support.tiny_sd import make_tiny_model

MODEL = "tiny-sd"
OUTPAINT = "/api/v6/image_editing/outpaint"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("editing")
    make_tiny_model(data_dir / "models", MODEL)
    write_official_weights(data_dir / "models" / "upscalers", DEFAULT_GENERATION_UPSCALER, "params")
    settings = make_settings(
        data_dir, engines=["diffusers"], sync_wait_s=90.0, worker_poll_s=0.05, default_model_id=MODEL
    )
    with run_server(settings) as server:
        supervisor = WorkerSupervisor(settings, 1, log_level="warning")
        supervisor.start()
        try:
            yield server
        finally:
            supervisor.stop(timeout=30)


@pytest.fixture(scope="module")
def key(live: LiveServer) -> str:
    return live.new_key(Role.USER)


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """Busy pixels: any change to them shows."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def post(http: httpx.Client, live: LiveServer, key: str, path: str, **fields: Any) -> dict[str, Any]:
    body = {"key": key, "model_id": MODEL, "num_inference_steps": 2, "seed": 3, "safety_checker": "no", **fields}
    reply: dict[str, Any] = http.post(live.url(path), json=body, timeout=180).json()
    return reply


def output(http: httpx.Client, reply: dict[str, Any], index: int = 0) -> np.ndarray[Any, np.dtype[np.int16]]:
    assert reply["status"] == "success", reply
    with Image.open(io.BytesIO(http.get(reply["output"][index]).content)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize(
    ("alignment", "overlap", "keep"),
    [("left", None, (0, 16, 40, 48)), ("middle", 4, (16, 20, 48, 44)), ("bottom", 0, (12, 32, 52, 64))],
)
def test_outpaint_extends_the_canvas_and_keeps_the_original_exactly(
    live: LiveServer, key: str, http: httpx.Client, alignment: str, overlap: int | None, keep: tuple[int, ...]
) -> None:
    original = picture(40, 32)
    fields = {"image": b64(original), "width": 64, "height": 64, "alignment": alignment, "overlap_width": overlap}
    reply = post(http, live, key, OUTPAINT, prompt="a wall", **fields)
    result = output(http, reply)
    assert result.shape == (64, 64, 3)
    assert reply["meta"]["kept_area"] == list(keep) and reply["meta"]["alignment"] == alignment
    left, top, right, bottom = keep
    placed = np.asarray(original, dtype=np.int16)
    offset_x, offset_y = {"left": (0, 16), "middle": (12, 16), "bottom": (12, 32)}[alignment]
    expected = placed[top - offset_y : bottom - offset_y, left - offset_x : right - offset_x]
    assert np.array_equal(result[top:bottom, left:right], expected), "the original pixels are unchanged"
    if alignment == "left":
        # The new area was painted, not left as the canvas's copies of the image's last column.
        assert np.abs(result[16:48, 48:] - placed[:, -1:]).mean() > 5


def test_outpaint_keeps_the_side_the_request_leaves_out(live: LiveServer, key: str, http: httpx.Client) -> None:
    original = picture(44, 64, seed=2)
    result = output(http, post(http, live, key, OUTPAINT, image=b64(original), width=96, alignment="right"))
    assert result.shape == (64, 96, 3)
    # 44 wide on a 96 canvas, right-aligned: the picture's pixels sit unchanged at x 52..96.
    assert np.array_equal(result[:, 52:], np.asarray(original, dtype=np.int16))


def test_outpaint_under_the_enterprise_alias_and_fetch(live: LiveServer, key: str, http: httpx.Client) -> None:
    reply = post(
        http, live, key, "/api/v1/enterprise/image_editing/outpaint", image=b64(picture(48, 48)), width=96, height=64,
        instant_response="yes",
    )  # fmt: skip
    assert reply["status"] == "processing", reply
    for _ in range(120):
        fetched = http.post(live.url(f"/api/v1/enterprise/image_editing/fetch/{reply['id']}"), json={"key": key})
        body = fetched.json()
        if body["status"] != "processing":
            break
        time.sleep(0.5)
    assert output(http, body).shape == (64, 96, 3)


@pytest.mark.parametrize("path", ["/api/v6/image_editing/object_removal", "/api/v6/image_editing/inpaint"])
def test_mask_edits_keep_the_image_size_and_the_unmasked_pixels(
    live: LiveServer, key: str, http: httpx.Client, path: str
) -> None:
    original = picture(96, 64, seed=1)
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (40, 16, 72, 48))
    reply = post(http, live, key, path, init_image=b64(original), mask_image=b64(mask), prompt="a stone")
    result = output(http, reply)
    assert result.shape == (64, 96, 3)
    # Far from the mask's feathered seam, the input is untouched; inside the mask, it was repainted.
    assert np.array_equal(result[:, :32], np.asarray(original, dtype=np.int16)[:, :32])
    assert np.abs(result[20:44, 44:68] - np.asarray(original, dtype=np.int16)[20:44, 44:68]).mean() > 10


def test_object_removal_needs_no_prompt(live: LiveServer, key: str, http: httpx.Client) -> None:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    reply = post(http, live, key, "/api/v1/enterprise/image_editing/object_removal", init_image=b64(picture(64, 64)),
                 mask_image=b64(mask))  # fmt: skip
    assert reply["status"] == "success", reply
    assert reply["meta"]["prompt"].startswith("empty background")


@pytest.mark.parametrize(
    ("path", "fields", "message"),
    [
        ("object_removal", {"init_image": "IMAGE"}, "mask_image: is required, got nothing"),
        ("inpaint", {"init_image": "IMAGE", "mask_image": "SMALL"}, "prompt: is required, got nothing"),
        (
            "object_removal",
            {"init_image": "IMAGE", "mask_image": "SMALL"},
            "mask_image: must be the size of init_image (64x64), got '32x32'",
        ),
        (
            "outpaint",
            {"image": "IMAGE", "width": 96, "alignment": "diagonal"},
            "alignment: must be one of middle, left, right, top, bottom, got 'diagonal'",
        ),
        ("outpaint", {"image": "IMAGE", "width": 64, "height": 64}, "width: must make the canvas larger"),
        ("outpaint", {"image": "IMAGE", "width": 96, "overlap_width": 999}, "overlap_width: must be between 0 and 256"),
        ("outpaint", {"width": 96}, "init_image: is required, got nothing"),
        ("outpaint", {"image": "IMAGE", "width": 96, "panorama": "yes"}, "panorama: applies to text2img only"),
    ],
)
def test_bad_input_is_a_field_error(
    live: LiveServer, key: str, http: httpx.Client, path: str, fields: dict[str, Any], message: str
) -> None:
    images = {"IMAGE": b64(picture(64, 64)), "SMALL": b64(Image.new("L", (32, 32), 255))}
    fields = {name: images.get(value, value) if isinstance(value, str) else value for name, value in fields.items()}
    reply = post(http, live, key, f"/api/v6/image_editing/{path}", **fields)
    assert reply["status"] == "error", reply
    assert reply["message"].startswith(message), reply["message"]
    assert message.split(":")[0] in reply["errors"]


def test_removebg_mask_says_it_is_unavailable(live: LiveServer, key: str, http: httpx.Client) -> None:
    reply = http.post(live.url("/api/v6/image_editing/removebg_mask"), json={"key": key, "image": "x"}).json()
    assert reply["status"] == "error" and reply["error_code"] == "feature_unavailable"
    assert "segmentation model" in reply["message"]


def test_text2img_upscale_yes_returns_images_at_twice_the_size(live: LiveServer, key: str, http: httpx.Client) -> None:
    reply = post(http, live, key, "/api/v6/images/text2img", prompt="a cat", width=96, height=64, upscale="yes")
    assert output(http, reply).shape == (128, 192, 3)
    assert reply["meta"]["upscale"] == "2" and "unsupported" not in reply["meta"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_official_sdk_outpaints_and_removes_objects(live: LiveServer, key: str) -> None:
    """modelslab-py's own calls, unchanged but for the base URL; they name no model: the default one runs."""
    client = Client(api_key=key, fetch_retry=1, fetch_timeout=0)
    client.base_url = live.url("/api/")
    api = Image_editing(client, enterprise=False)
    outpainted = api.outpainting(
        # The SDK sends its default overlap_width (64): more than a quarter of this picture, so a quarter is taken.
        OutpaintingSchema(prompt="a wall", image=b64(picture(48, 48)), width=96, height=64, num_inference_steps=2)
    )
    assert outpainted["status"] == "success" and outpainted["meta"]["W"] == 96, outpainted
    assert outpainted["meta"]["overlap_width"] == 64 and outpainted["meta"]["kept_area"] == [36, 20, 60, 44]
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (8, 8, 24, 24))
    schema = ObjectRemovalSchema(init_image=b64(picture(64, 64)), mask_image=b64(mask), num_inference_steps=2)
    removed = api.object_remover(schema)
    assert removed["status"] == "success" and removed["meta"]["model_id"] == MODEL, removed
