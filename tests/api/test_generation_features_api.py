"""Generation fields beyond the basics through HTTP: LoRA, VAE and embedding ids, enhance_prompt, tomesd, the safety
checker, accepted-but-unsupported flags and the PNG `parameters` chunk, on a tiny model and a real worker."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from sdserver.auth import Role
from sdserver.worker.supervisor import WorkerSupervisor
from tests.support.live_server import LiveServer, make_settings, run_server
from tests.support.tiny_addons import make_tiny_embedding, make_tiny_lora, make_tiny_vae
from tests.support.tiny_sd import make_tiny_model

MODEL = "tiny-sd"
SUFFIX = ", sharp"
PATH = "/api/v1/enterprise/text2img"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("generation-features")
    models = data_dir / "models"
    make_tiny_model(models, MODEL)
    make_tiny_lora(models, "detail")
    make_tiny_vae(models, "other-vae")
    make_tiny_embedding(models, "mystyle")
    settings = make_settings(
        data_dir, engines=["diffusers"], sync_wait_s=90.0, worker_poll_s=0.05, enhance_prompt_suffix=SUFFIX
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


def generate(http: httpx.Client, live: LiveServer, key: str, **fields: Any) -> dict[str, Any]:
    body = {
        "key": key,
        "model_id": MODEL,
        "prompt": "a photo of mystyle cat",
        "width": 64,
        "height": 64,
        "num_inference_steps": 2,
        "seed": 42,
        "enhance_prompt": "no",
        **fields,
    }
    reply: dict[str, Any] = http.post(live.url(PATH), json=body, timeout=180).json()
    return reply


def download(http: httpx.Client, reply: dict[str, Any]) -> bytes:
    assert reply["status"] == "success", reply
    return http.get(reply["output"][0]).content


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"lora_model": "detail, nope"}, "lora_model: not found: no LoRA with this id is loaded, got 'nope'"),
        ({"vae": "nope"}, "vae: not found: no VAE with this id is loaded, got 'nope'"),
        ({"embeddings": "nope"}, "embeddings_model: not found: no embedding with this id is loaded, got 'nope'"),
        ({"embeddings_model": ["../x"]}, "embeddings_model: must be a model id"),
        ({"lora_model": "detail", "lora_strength": "0.5,0.5"}, "lora_strength: must be one number or one per LoRA"),
        ({"lora_model": "detail", "lora_strength": "strong"}, "lora_strength: must be a number"),
        ({"lora_model": "detail", "lora_strength": "9"}, "lora_strength: must be between -4 and 4, got '9'"),
        ({"safety_checker_type": "erase"}, "safety_checker_type: must be one of sensitive_content_text, blur"),
        ({"tomesd": "maybe"}, "tomesd: must be a flag"),
    ],
    ids=["lora", "vae", "embedding", "bad-id", "strength-count", "strength-text", "strength-range", "mode", "flag"],
)
def test_bad_feature_fields_name_field_rule_and_value(
    live: LiveServer, key: str, http: httpx.Client, fields: dict[str, Any], message: str
) -> None:
    reply = generate(http, live, key, **fields)
    assert reply["status"] == "error", reply
    assert reply["message"].startswith(message)
    assert list(reply["errors"]) == [message.split(":")[0]]


def test_addons_change_the_output_and_the_next_plain_job_is_unchanged(
    live: LiveServer, key: str, http: httpx.Client
) -> None:
    plain = download(http, generate(http, live, key))
    reply = generate(
        http, live, key, lora_model="detail", lora_strength="0.8", vae="other-vae", embeddings_model="mystyle"
    )
    styled = download(http, reply)
    meta = reply["meta"]
    assert (meta["lora"], meta["lora_strength"], meta["vae"], meta["embeddings"]) == (
        "detail",
        "0.8",
        "other-vae",
        "mystyle",
    )
    assert styled != plain
    assert download(http, generate(http, live, key)) == plain
    with Image.open(io.BytesIO(styled)) as image:
        parameters = image.text["parameters"]  # type: ignore[attr-defined]
    assert parameters.startswith("a photo of mystyle cat\nSteps: 2, Sampler: ")
    assert (
        'Seed: 42, Size: 64x64, Model: tiny-sd, VAE: other-vae, Lora: "detail: 0.8", Embeddings: mystyle' in parameters
    )


def test_defaults_enhance_the_prompt_screen_and_merge_tokens(live: LiveServer, key: str, http: httpx.Client) -> None:
    reply = generate(http, live, key, enhance_prompt=None, multi_lingual="yes", panorama="no", upscale="no")
    assert reply["status"] == "success", reply
    meta = reply["meta"]
    assert meta["prompt"] == "a photo of mystyle cat" + SUFFIX
    assert (meta["enhance_prompt"], meta["tomesd"], meta["safetychecker"]) == ("yes", "yes", "yes")
    assert meta["safety_checker_type"] == "sensitive_content_text"
    assert reply["nsfw_content_detected"] is False and len(meta["nsfw_scores"]) == 1
    assert meta["upscale"] == "no" and list(meta["unsupported"]) == ["multi_lingual"]
    assert meta["file_prefix"] and reply["output"][0].rsplit("/", 1)[-1].startswith(meta["file_prefix"])
    off = generate(http, live, key, safety_checker="no", tomesd="no")
    assert (off["meta"]["safetychecker"], off["meta"]["tomesd"]) == ("no", "no")
    assert "unsupported" not in off["meta"] and "nsfw_scores" not in off["meta"]
