"""Generation through HTTP on a tiny seeded Stable Diffusion model and a real worker process."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from sdserver.auth import Role
from sdserver.worker.supervisor import WorkerSupervisor
from tests.support.image_files import png_bytes
from tests.support.live_server import LiveServer, make_settings, run_server
from tests.support.tiny_sd import make_tiny_model

MODEL = "tiny-sd"


@pytest.fixture(scope="module")
def generation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A live API and one real worker process (supervised) running the diffusers engine on a tiny model."""
    data_dir = tmp_path_factory.mktemp("generation")
    make_tiny_model(data_dir / "models", MODEL)
    settings = make_settings(data_dir, engines=["diffusers"], sync_wait_s=60.0, worker_poll_s=0.05)
    with run_server(settings) as live:
        supervisor = WorkerSupervisor(settings, 1, log_level="warning")
        supervisor.start()
        try:
            yield live
        finally:
            supervisor.stop(timeout=30)


@pytest.fixture(scope="module")
def key(generation: LiveServer) -> str:
    return generation.new_key(Role.USER)


def post(http: httpx.Client, live: LiveServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    reply: dict[str, Any] = http.post(live.url(path), json=body, timeout=120).json()
    return reply


def generate(http: httpx.Client, live: LiveServer, key: str, path: str, **fields: Any) -> dict[str, Any]:
    body = {
        "key": key,
        "model_id": MODEL,
        "prompt": "a red house",
        "width": 64,
        "height": 64,
        "num_inference_steps": 2,
        "seed": 42,
        **fields,
    }
    return post(http, live, path, body)


def test_upload_then_img2img_then_fetch_then_download(generation: LiveServer, key: str, http: httpx.Client) -> None:
    uploaded = post(
        http,
        generation,
        "/api/v1/enterprise/upload_image",
        {"key": key, "base64_image": base64.b64encode(png_bytes(80, 60)).decode()},
    )
    reply = generate(
        http, generation, key, "/api/v1/enterprise/img2img", init_image=uploaded["image_url"], strength=0.6
    )
    assert reply["status"] == "success", reply
    fetched = post(http, generation, f"/api/v1/enterprise/fetch/{reply['id']}", {"key": key})
    assert fetched["status"] == "success" and fetched["output"] == reply["output"]
    image = Image.open(io.BytesIO(http.get(reply["output"][0]).content))
    assert image.format == "PNG" and image.size == (64, 64)
    assert reply["meta"]["strength"] == 0.6 and reply["meta"]["seed"] == 42
    assert reply["meta"]["precision"] in ("bf16", "fp32")


def test_text2img_same_seed_same_bytes_different_seed_different(
    generation: LiveServer, key: str, http: httpx.Client
) -> None:
    outputs = [
        http.get(generate(http, generation, key, "/api/v6/images/text2img", seed=seed)["output"][0]).content
        for seed in (7, 7, 8)
    ]
    assert outputs[0] == outputs[1] != outputs[2]


def test_inpaint_with_a_mask(generation: LiveServer, key: str, http: httpx.Client) -> None:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    reply = generate(
        http,
        generation,
        key,
        "/api/v3/inpaint",
        init_image=base64.b64encode(png_bytes(64, 64)).decode(),
        mask_image=base64.b64encode(buffer.getvalue()).decode(),
        steps=2,
        samples=2,
    )
    assert reply["status"] == "success", reply
    assert len(reply["output"]) == 2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"model_id": "not-loaded"}, "Model id not found"),
        ({"width": 2000, "height": 2000}, "width: must be at most 1024 for sd15 models, got 2000"),
        ({"scheduler": "KarrasVeScheduler"}, "scheduler: KarrasVeScheduler cannot sample a Stable Diffusion model"),
        ({"scheduler": "NoSuchScheduler"}, "scheduler: scheduler 'NoSuchScheduler' is not known"),
    ],
    ids=["unknown-model", "too-large", "karras-ve", "unknown-scheduler"],
)
def test_bad_generation_requests(
    generation: LiveServer, key: str, http: httpx.Client, fields: dict[str, Any], message: str
) -> None:
    reply = generate(http, generation, key, "/api/v1/enterprise/text2img", **fields)
    assert reply["status"] == "error"
    assert reply["message"].startswith(message)


def test_a1111_scheduler_names_are_accepted(generation: LiveServer, key: str, http: httpx.Client) -> None:
    reply = generate(http, generation, key, "/api/v1/enterprise/text2img", scheduler="DPM++ 2M Karras")
    assert reply["status"] == "success", reply
    assert reply["meta"]["scheduler"] == "DPMSolverMultistepScheduler"
    assert reply["meta"]["use_karras_sigmas"] == "yes"


def test_cancel_stops_a_running_generation(generation: LiveServer, key: str, http: httpx.Client) -> None:
    reply = generate(
        http,
        generation,
        key,
        "/api/v1/enterprise/text2img",
        num_inference_steps=50,
        width=256,
        height=256,
        instant_response="yes",
    )
    job_id = reply["id"]
    deadline = time.monotonic() + 60
    while post(http, generation, f"/api/v1/enterprise/fetch/{job_id}", {"key": key}).get("progress", 0) <= 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    post(http, generation, f"/api/v1/enterprise/cancel/{job_id}", {"key": key})
    while (fetched := post(http, generation, f"/api/v1/enterprise/fetch/{job_id}", {"key": key}))["status"] != "failed":
        assert time.monotonic() < deadline, fetched
        time.sleep(0.05)
    assert fetched["error_code"] == "cancelled"
