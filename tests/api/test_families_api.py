"""Model families through HTTP: detected at load (an unsupported file fails its load and installs nothing), shown by
get_all_models and sync_models, and planned at submit (defaults, caps, schedulers, fields that do not apply, jobs
the family cannot run refused before a job row exists). Models are family layouts (configs and headers only)."""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdserver.auth import Role
from sdserver.catalog.registry import ModelKind, ModelState
from sdserver.engines.model_loader import ModelLoaderEngine
from sdserver.job_params import GenerationParams
from tests.support.family_layouts import checkpoint_bytes, lora_bytes, write_folder_model
from tests.support.http_host import HttpHost, Reply
from tests.support.image_files import png_bytes
from tests.support.live_server import LiveServer, make_settings, run_server, worker_thread

V1 = "/api/v1/enterprise"
SETTINGS: dict[str, Any] = {
    "engines": ["models"],
    "fetch_allowlist": ["127.0.0.1"],
    "job_lease_s": 3.0,
    "worker_poll_s": 0.05,
}
# A layout of no supported family: a safetensors file of unrelated tensors.
ALIEN = checkpoint_bytes("sd15").replace(b"model.diffusion_model.input_blocks", b"model.diffusion_model.output_block")
# Dropped-in folder models of each family, by id.
LAYOUTS = ("sd15", "sd2v", "sdxl", "sdxl_refiner", "sd3", "flux", "flux_schnell", "lcm")


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveServer]:
    """A live API with one in-process worker running the `models` engine, and a folder model of every layout."""
    with run_server(make_settings(tmp_path, **SETTINGS)) as server, contextlib.ExitStack() as stack:
        engine = ModelLoaderEngine(server.services.settings, server.services.registry)
        stack.enter_context(worker_thread(server, [engine], "models-worker"))
        for layout in LAYOUTS:
            write_folder_model(server.services.settings.data_dir / "models", layout, layout)
        yield server


@pytest.fixture
def admin(live: LiveServer) -> str:
    return live.new_key(Role.ADMIN)


@pytest.fixture
def user(live: LiveServer) -> str:
    return live.new_key(Role.USER)


@pytest.fixture
def host() -> Iterator[HttpHost]:
    routes = {"/sd15.safetensors": Reply(checkpoint_bytes("sd15")), "/alien.safetensors": Reply(ALIEN)}
    with HttpHost(routes) as running:
        yield running


def call(http: httpx.Client, live: LiveServer, endpoint: str, key: str, **fields: Any) -> dict[str, Any]:
    reply: dict[str, Any] = http.post(live.url(f"{V1}/{endpoint}"), json={"key": key, **fields}).json()
    return reply


def text2img(http: httpx.Client, live: LiveServer, key: str, **fields: Any) -> dict[str, Any]:
    body = {"prompt": "a lighthouse", "instant_response": "yes"} | fields
    return call(http, live, "text2img", key, **body)


def models_by_id(http: httpx.Client, live: LiveServer, key: str, endpoint: str = "get_all_models") -> dict[str, Any]:
    reply = call(http, live, endpoint, key)
    assert reply["status"] == "success", reply
    return {entry["model_id"]: entry for entry in reply["models"]}


def wait_for_state(http: httpx.Client, live: LiveServer, key: str, model_id: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    entry = None
    while time.monotonic() < deadline:
        entry = models_by_id(http, live, key).get(model_id)
        if entry is not None and entry["state"] == state:
            return entry
        time.sleep(0.05)
    raise AssertionError(f"{model_id} never reached {state}: {entry}")


def queued_params(live: LiveServer, reply: dict[str, Any]) -> tuple[GenerationParams, int, int]:
    assert reply["status"] == "processing", reply
    job = live.services.jobs.get(reply["id"], owner_key_id=None)
    return job.params_as(GenerationParams), job.width or 0, job.height or 0


def test_an_unsupported_checkpoint_fails_its_load_and_the_loaded_model_stays_usable(
    live: LiveServer, admin: str, user: str, host: HttpHost, http: httpx.Client
) -> None:
    loaded = call(
        http, live, "load_model", admin, url=host.url("/sd15.safetensors"), model_id="base", model_type="custom_ckpt"
    )
    assert loaded["status"] == "success", loaded
    assert wait_for_state(http, live, user, "base", "ready")["family"] == "sd15"
    bad = call(
        http, live, "load_model", admin, url=host.url("/alien.safetensors"), model_id="alien", model_type="custom_ckpt"
    )
    assert bad["status"] == "success", bad
    entry = wait_for_state(http, live, user, "alien", "failed")
    assert entry["message"].startswith("Model load failed: alien: no Stable Diffusion"), entry
    fetched = call(http, live, f"fetch/{bad['id']}", admin)
    assert fetched["status"] == "failed" and fetched["error_code"] == "unsupported_model", fetched
    models_dir = live.services.settings.data_dir / "models"
    # Nothing installed and nothing left staged; the model loaded before is untouched and still generates.
    assert not list((models_dir / "checkpoints").glob("alien*"))
    assert not list((models_dir / ".staging").glob("*alien*"))
    assert (models_dir / "checkpoints" / "base.safetensors").read_bytes() == checkpoint_bytes("sd15")
    verified = call(http, live, "verify_model", user, model_id="base")
    assert (verified["message"], verified["family"]) == ("Model exists on server", "sd15"), verified
    assert verified["runs"] == ["text2img", "img2img", "inpaint", "controlnet"] and verified["schedulers"]
    assert text2img(http, live, user, model_id="alien")["message"] == "Model id not found"
    params, width, _ = queued_params(live, text2img(http, live, user, model_id="base"))
    assert width == 512 and params.steps == 20


def test_get_all_models_and_sync_models_show_each_family(
    live: LiveServer, admin: str, user: str, http: httpx.Client
) -> None:
    (live.services.settings.data_dir / "models" / "checkpoints").mkdir(parents=True)
    (live.services.settings.data_dir / "models" / "checkpoints" / "alien.safetensors").write_bytes(ALIEN)
    listed = models_by_id(http, live, user)
    expected = {
        "sd15": ("sd15", "epsilon", None),
        "sd2v": ("sd2", "v_prediction", None),
        "sdxl": ("sdxl", "epsilon", None),
        "sdxl_refiner": ("sdxl_refiner", "epsilon", None),
        "sd3": ("sd3", "flow_match", None),
        "flux": ("flux", "flow_match", None),
        "flux_schnell": ("flux", "flow_match", "schnell"),
        "lcm": ("sd15", "epsilon", "lcm"),
    }
    for model_id, (family, prediction, few_step) in expected.items():
        entry = listed[model_id]
        assert (entry["family"], entry["prediction_type"], entry["few_step"]) == (family, prediction, few_step)
    assert listed["alien"]["family"] == "unsupported" and listed["alien"]["supported"] is False
    refiner = call(http, live, "verify_model", user, model_id="sdxl_refiner")
    assert refiner["runs"] == ["img2img", "inpaint"], refiner
    assert "no Stable Diffusion" in listed["alien"]["unsupported_reason"]
    synced = models_by_id(http, live, admin, "sync_models")
    assert {model_id: synced[model_id]["family"] for model_id in ("sdxl", "flux", "alien")} == {
        "sdxl": "sdxl",
        "flux": "flux",
        "alien": "unsupported",
    }


@pytest.mark.parametrize(
    ("model_id", "side", "steps", "guidance", "scheduler"),
    [
        ("sd15", 512, 20, 7.5, "UniPCMultistepScheduler"),
        ("sd2v", 768, 20, 7.5, "UniPCMultistepScheduler"),
        ("sdxl", 1024, 25, 7.0, "UniPCMultistepScheduler"),
        ("sd3", 1024, 28, 7.0, "FlowMatchEulerDiscreteScheduler"),
        ("flux", 1024, 28, 3.5, "FlowMatchEulerDiscreteScheduler"),
        ("flux_schnell", 1024, 4, 0.0, "FlowMatchEulerDiscreteScheduler"),
        ("lcm", 512, 6, 1.0, "LCMScheduler"),
    ],
)
def test_fields_left_out_get_the_familys_defaults_in_the_job(
    live: LiveServer,
    user: str,
    http: httpx.Client,
    model_id: str,
    side: int,
    steps: int,
    guidance: float,
    scheduler: str,
) -> None:
    reply = text2img(http, live, user, model_id=model_id)
    params, width, height = queued_params(live, reply)
    assert (width, height, params.steps, params.guidance_scale) == (side, side, steps, guidance)
    assert params.scheduler.class_name == scheduler
    assert (reply["meta"]["W"], reply["meta"]["H"], reply["meta"]["scheduler"]) == (side, side, scheduler)


def test_size_caps_are_per_family_and_name_the_family(live: LiveServer, user: str, http: httpx.Client) -> None:
    _, width, height = queued_params(live, text2img(http, live, user, model_id="sdxl", width=2048, height=1536))
    assert (width, height) == (2048, 1536)
    refused = text2img(http, live, user, model_id="sdxl", width=2100)
    assert refused["message"] == "width: must be at most 2048 for sdxl models, got 2100", refused
    assert refused["errors"] == {"width": ["must be at most 2048 for sdxl models, got 2100"]}
    # SD3 and Flux latents are 2x2 patches of 8-pixel blocks: sizes round down to 16.
    _, width, _ = queued_params(live, text2img(http, live, user, model_id="flux", width=1000))
    assert width == 992


def test_a_scheduler_the_family_cannot_use_is_refused_naming_the_valid_ones(
    live: LiveServer, user: str, http: httpx.Client
) -> None:
    before = live.job_count()
    reply = text2img(http, live, user, model_id="flux", scheduler="DPMSolverMultistepScheduler")
    assert reply["status"] == "error" and reply["error_code"] == "validation_error", reply
    assert "DPMSolverMultistepScheduler cannot sample flux models" in reply["message"]
    assert "FlowMatchEulerDiscreteScheduler" in reply["errors"]["scheduler"][0]
    assert "got 'DPMSolverMultistepScheduler'" in reply["errors"]["scheduler"][0]
    sd3 = text2img(http, live, user, model_id="sd3", scheduler="Euler a")
    assert sd3["message"].endswith("valid for this family: FlowMatchEulerDiscreteScheduler, got 'Euler a'"), sd3
    assert live.job_count() == before
    _, _, _ = queued_params(
        live, text2img(http, live, user, model_id="sd3", scheduler="FlowMatchEulerDiscreteScheduler")
    )
    assert text2img(http, live, user, model_id="sd15", scheduler="FlowMatchEulerDiscreteScheduler")["status"] == "error"


@pytest.mark.parametrize(
    ("endpoint", "model_id", "fields", "says"),
    [
        ("text2img", "sdxl_refiner", {}, "cannot run text2img jobs; it runs img2img, inpaint"),
        ("controlnet", "flux", {"controlnet_model": "canny"}, "cannot run ControlNet jobs"),
        ("img2img", "alien", {}, "cannot run on this server: alien.safetensors: no Stable Diffusion"),
    ],
    ids=["refiner-from-noise", "controlnet-on-flux", "unsupported-layout"],
)
def test_a_job_the_model_cannot_run_is_refused_at_submit_and_writes_no_job(
    live: LiveServer, user: str, http: httpx.Client, endpoint: str, model_id: str, fields: dict[str, Any], says: str
) -> None:
    (live.services.settings.data_dir / "models" / "checkpoints").mkdir(parents=True)
    (live.services.settings.data_dir / "models" / "checkpoints" / "alien.safetensors").write_bytes(ALIEN)
    before = live.job_count()
    body = {"model_id": model_id, "init_image": base64.b64encode(png_bytes()).decode(), **fields}
    reply = call(http, live, endpoint, user, prompt="a lighthouse", **body)
    assert (reply["status"], reply["error_code"]) == ("error", "unsupported_model"), reply
    assert reply["message"].startswith(f"Model {model_id!r}") and says in reply["message"], reply
    assert live.job_count() == before


def test_fields_that_do_not_apply_are_listed_in_meta_unsupported_and_not_run(
    live: LiveServer, user: str, http: httpx.Client
) -> None:
    reply = text2img(
        http, live, user, model_id="flux", negative_prompt="blurry", clip_skip=2, tomesd="yes", refiner="yes"
    )
    params, _, _ = queued_params(live, reply)
    unsupported = reply["meta"]["unsupported"]
    assert {"negative_prompt", "clip_skip", "tomesd", "refiner"} <= unsupported.keys(), unsupported
    assert "flux" in unsupported["negative_prompt"]
    assert (params.negative_prompt, params.clip_skip, params.tomesd, params.refiner) == ("", None, False, False)
    # On SDXL the same fields apply: nothing is listed, the refiner pass is asked for.
    sdxl = text2img(http, live, user, model_id="sdxl", negative_prompt="blurry", clip_skip=2, refiner="yes")
    params, _, _ = queued_params(live, sdxl)
    assert "unsupported" not in sdxl["meta"] and params.refiner and params.negative_prompt == "blurry"


def test_few_step_models_cap_guidance_sent_out_of_habit(live: LiveServer, user: str, http: httpx.Client) -> None:
    reply = text2img(http, live, user, model_id="lcm", guidance_scale=7.5, num_inference_steps=30)
    params, _, _ = queued_params(live, reply)
    assert params.guidance_scale == 2.0 and reply["meta"]["guidance_scale"] == 2.0
    assert "capped at 2" in reply["meta"]["unsupported"]["guidance_scale"]
    schnell = text2img(http, live, user, model_id="flux_schnell", guidance_scale=3.5)
    params, _, _ = queued_params(live, schnell)
    assert params.guidance_scale == 0.0 and "guidance_scale" in schnell["meta"]["unsupported"]


def test_loras_are_checked_against_the_registry_and_the_models_family(
    live: LiveServer, admin: str, user: str, http: httpx.Client
) -> None:
    loras = live.services.settings.data_dir / "models" / "lora"
    loras.mkdir(parents=True)
    (loras / "xl-style.safetensors").write_bytes(lora_bytes(2048))
    (loras / "sd-style.safetensors").write_bytes(lora_bytes(768))
    refused = text2img(http, live, user, model_id="sd15", lora_model="xl-style")
    assert refused["errors"]["lora_model"][0].startswith("is a sdxl LoRA and cannot apply to 'sd15', a sd15 model")
    assert queued_params(live, text2img(http, live, user, model_id="sd15", lora_model="sd-style"))[0].loras
    # A LoRA the registry knows is accepted whichever box holds its file; one still loading is refused as such.
    registry = live.services.registry
    registry.begin_load(ModelKind.LORA, "remote", source="https://example.com/remote.safetensors")
    loading = text2img(http, live, user, model_id="sdxl", lora_model="remote")
    assert loading["errors"]["lora_model"] == ["the LoRA is still loading; try again when it is ready, got 'remote'"]
    registry.mark_ready(ModelKind.LORA, "remote", format="safetensors", size=1)
    assert registry.get(ModelKind.LORA, "remote") is not None
    assert queued_params(live, text2img(http, live, user, model_id="sdxl", lora_model="remote"))[0].loras
    assert registry.get(ModelKind.LORA, "remote").state is ModelState.READY  # type: ignore[union-attr]


@pytest.mark.parametrize("model_id", ["sdxl", "flux"])
def test_embeddings_are_refused_where_the_family_cannot_use_them(
    live: LiveServer, user: str, http: httpx.Client, model_id: str
) -> None:
    before = live.job_count()
    reply = text2img(http, live, user, model_id=model_id, embeddings_model="easynegative")
    assert reply["status"] == "error" and reply["error_code"] == "validation_error", reply
    rule = f"textual-inversion embeddings work with sd15 and sd2 models only, not {model_id} models"
    assert reply["errors"] == {"embeddings_model": [f"{rule}, got 'easynegative'"]}
    assert live.job_count() == before
