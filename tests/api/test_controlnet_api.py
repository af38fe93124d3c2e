"""ControlNet through HTTP on every alias path: a tiny seeded model and ControlNet, and a real worker process."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from sdserver.api.aliases import CONTROLNET_PATHS
from sdserver.auth import Role
from sdserver.worker.supervisor import WorkerSupervisor
from tests.support.image_files import png_bytes
from tests.support.live_server import LiveServer, make_settings, run_server
from tests.support.tiny_controlnet import make_tiny_controlnet
from tests.support.tiny_sd import make_tiny_model

MODEL = "tiny-sd"
INPAINTING_MODEL = "tiny-inpainting"
CONTROLNET = "tiny-cn"
SECOND_CONTROLNET = "canny"  # named after its type: auto_hint finds the preprocessor without controlnet_type


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A live API and one real worker process (supervised) running the diffusers engine."""
    data_dir = tmp_path_factory.mktemp("controlnet-api")
    models = data_dir / "models"
    make_tiny_model(models, MODEL)
    make_tiny_model(models, INPAINTING_MODEL, inpainting=True)
    make_tiny_controlnet(models, CONTROLNET, seed=1)
    make_tiny_controlnet(models, SECOND_CONTROLNET, seed=2)
    settings = make_settings(data_dir, engines=["diffusers"], sync_wait_s=60.0, worker_poll_s=0.05)
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


def b64_png(width: int = 64, height: int = 64) -> str:
    return base64.b64encode(png_bytes(width, height)).decode()


def post(http: httpx.Client, live: LiveServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    reply: dict[str, Any] = http.post(live.url(path), json=body, timeout=120).json()
    return reply


def controlnet(
    http: httpx.Client, live: LiveServer, key: str, path: str = CONTROLNET_PATHS[0], **fields: Any
) -> dict[str, Any]:
    body = {
        "key": key,
        "model_id": MODEL,
        "controlnet_model": CONTROLNET,
        "prompt": "a red house",
        "init_image": b64_png(),
        "width": 64,
        "height": 64,
        "num_inference_steps": 2,
        "seed": 42,
        # The screen has its own tests; these compare pixels of noise a classifier might flag.
        "safety_checker": "no",
        **fields,
    }
    return post(http, live, path, body)


@pytest.mark.parametrize("path", CONTROLNET_PATHS)
def test_controlnet_on_every_path_then_fetch_then_download(
    live: LiveServer, key: str, http: httpx.Client, path: str
) -> None:
    reply = controlnet(http, live, key, path, controlnet_conditioning_scale="0.8", track_id=7)
    assert reply["status"] == "success", reply
    meta = reply["meta"]
    assert meta["controlnet_model"] == CONTROLNET and meta["controlnet_conditioning_scale"] == 0.8
    assert meta["controlnet_mode"] == "text2img" and meta["guess_mode"] == "no" and meta["auto_hint"] == "no"
    assert meta["seed"] == 42 and meta["W"] == 64 and meta["init_image"] == "<base64>"
    assert meta["id"] == str(reply["id"])
    image = Image.open(io.BytesIO(http.get(reply["output"][0]).content))
    assert image.format == "PNG" and image.size == (64, 64)
    # fetch lives under the family the request came in on (/api/v5/controlnet -> /api/v5/fetch).
    prefix = path.removesuffix("/controlnet")
    fetched = post(http, live, f"{prefix}/fetch/{reply['id']}", {"key": key})
    assert fetched["status"] == "success" and fetched["output"] == reply["output"]


def test_same_seed_same_bytes_and_the_scale_changes_the_image(live: LiveServer, key: str, http: httpx.Client) -> None:
    def output(**fields: Any) -> bytes:
        reply = controlnet(http, live, key, base64="yes", **fields)
        assert reply["status"] == "success", reply
        return base64.b64decode(reply["output"][0])

    first, again, off = output(), output(), output(controlnet_conditioning_scale=0)
    assert first == again != off
    assert Image.open(io.BytesIO(first)).size == (64, 64)


def test_img2img_mode_two_controlnets_and_auto_hint(live: LiveServer, key: str, http: httpx.Client) -> None:
    reply = controlnet(
        http,
        live,
        key,
        "/api/v5/controlnet",
        control_image=b64_png(80, 80),
        controlnet_model=f"{CONTROLNET}, {SECOND_CONTROLNET}",
        controlnet_type="canny",
        controlnet_conditioning_scale=[1, 0.5],  # a JSON list works like the comma string
        auto_hint="yes",
        strength="0.9",
        samples=2,
    )
    assert reply["status"] == "success", reply
    assert len(reply["output"]) == 2
    meta = reply["meta"]
    assert meta["controlnet_mode"] == "img2img" and meta["strength"] == 0.9
    assert meta["controlnet_model"] == f"{CONTROLNET},{SECOND_CONTROLNET}" and meta["controlnet_type"] == "canny,canny"
    assert meta["controlnet_conditioning_scale"] == [1.0, 0.5] and meta["auto_hint"] == "yes"
    assert meta["hint_preprocessors"] == ["canny", "ip2p", "tile"]


def test_guess_mode_needs_no_prompt(live: LiveServer, key: str, http: httpx.Client) -> None:
    reply = controlnet(http, live, key, prompt=None, guess_mode=True)
    assert reply["status"] == "success", reply
    assert reply["meta"]["guess_mode"] == "yes" and reply["meta"]["prompt"] == ""


def test_instant_response_answers_processing_then_fetch_succeeds(
    live: LiveServer, key: str, http: httpx.Client
) -> None:
    reply = controlnet(http, live, key, "/api/v6/images/controlnet", instant_response="yes", temp="yes")
    assert reply["status"] == "processing", reply
    assert reply["fetch_result"] == live.url(f"/api/v6/images/fetch/{reply['id']}")
    assert reply["meta"]["temp"] == "yes" and len(reply["future_links"]) == 1
    deadline = time.monotonic() + 60
    while (fetched := post(http, live, f"/api/v6/images/fetch/{reply['id']}", {"key": key}))["status"] != "success":
        assert fetched["status"] == "processing" and time.monotonic() < deadline, fetched
        time.sleep(0.1)
    assert fetched["output"] == reply["future_links"]


def test_default_safety_screen_and_addon_checks_apply(live: LiveServer, key: str, http: httpx.Client) -> None:
    reply = controlnet(http, live, key, safety_checker=None, samples=2)
    assert reply["status"] == "success", reply
    assert reply["meta"]["safetychecker"] == "yes" and len(reply["meta"]["nsfw_scores"]) == 2
    missing = controlnet(http, live, key, lora_model="no-such-lora")
    assert missing["status"] == "error" and missing["errors"]["lora_model"], missing


def test_a_job_the_model_cannot_run_is_refused_at_submit(live: LiveServer, key: str, http: httpx.Client) -> None:
    """An inpainting model cannot run ControlNet text2img: refused before a job is written (no worker evicts)."""
    before = live.job_count()
    reply = controlnet(http, live, key, model_id=INPAINTING_MODEL)
    assert (reply["status"], reply["error_code"]) == ("error", "unsupported_model"), reply
    assert "inpainting model" in reply["message"] and repr(INPAINTING_MODEL) in reply["message"]
    assert "ControlNet text2img" in reply["message"]
    assert live.job_count() == before


@pytest.mark.parametrize(
    ("fields", "message", "field"),
    [
        ({"model_id": "not-loaded"}, "Model id not found", None),
        (
            {"controlnet_model": "nope"},
            "controlnet_model: is not a ControlNet on this server, got 'nope'",
            "controlnet_model",
        ),
        ({"controlnet_model": None}, "controlnet_model: is required", "controlnet_model"),
        ({"init_image": None}, "init_image: is required (or give a control_image)", "init_image"),
        ({"init_image": None, "control_image": b64_png(), "mask_image": b64_png()}, "init_image: is required", None),
        ({"prompt": ""}, "prompt: is required (unless guess_mode is yes)", "prompt"),
        ({"auto_hint": "yes", "controlnet_type": "depth"}, "controlnet_type: auto_hint can make hints for", None),
        ({"controlnet_conditioning_scale": "abc"}, "controlnet_conditioning_scale: must be a number", None),
        ({"controlnet_conditioning_scale": "1,1"}, "controlnet_conditioning_scale: must be one value or one", None),
        ({"controlnet_conditioning_scale": 9}, "controlnet_conditioning_scale: must be between 0 and 5", None),
        ({"control_image": b64_png(), "strength": 2}, "strength: must be between 0 and 1, got 2.0", "strength"),
        ({"width": 2000}, "width: must be at most 1024 for sd15 models, got 2000", "width"),
        ({"samples": "x"}, "samples: must be a number, got 'x'", "samples"),
    ],
    ids=[
        "unknown-model",
        "unknown-controlnet",
        "no-controlnet",
        "no-image",
        "mask-without-init",
        "no-prompt",
        "auto-hint-depth",
        "scale-not-a-number",
        "scale-count",
        "scale-range",
        "strength-range",
        "too-wide",
        "samples-not-a-number",
    ],
)
def test_bad_controlnet_requests(
    live: LiveServer, key: str, http: httpx.Client, fields: dict[str, Any], message: str, field: str | None
) -> None:
    reply = controlnet(http, live, key, CONTROLNET_PATHS[1], **fields)
    assert reply["status"] == "error", reply
    assert reply["message"].startswith(message), reply
    if field is not None:
        assert field in reply["errors"], reply


def test_auto_hint_error_lists_the_supported_types(live: LiveServer, key: str, http: httpx.Client) -> None:
    reply = controlnet(http, live, key, auto_hint="yes", controlnet_type="openpose")
    assert reply["status"] == "error"
    assert "canny, ip2p, tile" in reply["message"] and "'openpose'" in reply["message"]
    assert reply["errors"]["controlnet_type"]
