"""The real `webuiapi` client, unchanged but for its base URL and credentials, against a live server with a tiny
model; A1111-shaped errors; progress and interrupt see only the caller's jobs."""

from __future__ import annotations

import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import webuiapi
from PIL import Image

from sdserver.auth import Role
from tests.api.dialects.conftest import MODEL, SIZE
from tests.support.live_server import LiveServer

FAST = {"steps": 2, "width": SIZE, "height": SIZE}


def client_for(live: LiveServer, key: str) -> webuiapi.WebUIApi:
    # A1111's --api-auth: the key is the password (the user name is free).
    return webuiapi.WebUIApi(baseurl=live.url("/sdapi/v1"), username="me", password=key)


def test_txt2img_returns_images_info_and_parameters(working: LiveServer, working_key: str) -> None:
    api = client_for(working, working_key)
    result = api.txt2img(prompt="a red house", seed=11, batch_size=2, sampler_name="Euler a", **FAST)
    assert [image.size for image in result.images] == [(SIZE, SIZE)] * 2
    assert result.info["seed"] == 11 and result.info["all_seeds"] == [11, 12]
    assert result.info["sd_model_name"] == MODEL and result.info["sampler_name"] == "Euler a"
    assert "Seed: 11" in result.info["infotexts"][0] and result.parameters["prompt"] == "a red house"
    # png-info reads the A1111 `parameters` text our images carry.
    read = api.png_info(result.images[0])
    assert read.info.startswith("a red house") and read.json["parameters"]["Seed"] == "11"


def test_img2img_with_a_mask_and_karras_scheduler(working: LiveServer, working_key: str) -> None:
    api = client_for(working, working_key)
    start = Image.new("RGB", (SIZE, SIZE), (30, 200, 30))
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 16, 48, 48))
    redrawn = api.img2img(
        images=[start],
        prompt="a tree",
        denoising_strength=0.5,
        override_settings={"sd_model_checkpoint": f"{MODEL}.safetensors"},
        **FAST,
    )
    inpainted = api.img2img(
        images=[start], mask_image=mask, prompt="a door", sampler_name="DPM++ 2M", scheduler="Karras", **FAST
    )
    assert redrawn.images[0].size == inpainted.images[0].size == (SIZE, SIZE)
    assert redrawn.info["sd_model_name"] == MODEL
    assert inpainted.info["denoising_strength"] is not None


def test_send_images_false_answers_without_images(working: LiveServer, working_key: str) -> None:
    result = client_for(working, working_key).txt2img(prompt="a hat", send_images=False, **FAST)
    assert result.images == [] and result.info["infotexts"]


def test_extra_single_image_upscales(working: LiveServer, working_key: str) -> None:
    result = client_for(working, working_key).extra_single_image(
        image=Image.new("RGB", (32, 24), (90, 90, 200)), upscaling_resize=2
    )
    assert result.image.size == (64, 48)


def test_the_catalog_routes(working: LiveServer, working_key: str) -> None:
    api = client_for(working, working_key)
    assert MODEL in api.util_get_model_names()
    assert "Euler a" in api.util_get_sampler_names()
    assert api.get_options()["sd_model_checkpoint"] == MODEL
    assert "realesr-general-x4v3" in [item["name"] for item in api.get_upscalers()]


def test_the_model_switch_needs_an_admin_key(working: LiveServer, working_key: str, http: httpx.Client) -> None:
    user = http.post(working.url("/sdapi/v1/options"), json={"sd_model_checkpoint": MODEL}, auth=("me", working_key))
    assert user.status_code == 403 and "admin" in user.json()["detail"]
    admin = client_for(working, working.new_key(Role.ADMIN))
    assert admin.set_options({"sd_model_checkpoint": f"{MODEL} [abc123]"}) is None
    missing = http.post(
        working.url("/sdapi/v1/options"), json={"sd_model_checkpoint": "nope"}, auth=("me", working.new_key(Role.ADMIN))
    )
    assert missing.status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("txt2img", {"prompt": "x", "width": 8}, "width"),
        ("txt2img", {"prompt": "x", "steps": "lots"}, "steps"),
        ("txt2img", {"prompt": "x", "batch_size": 3, "n_iter": 2}, "batch_size"),
        ("txt2img", {"prompt": "x", "sampler_name": "Nonsense"}, "sampler_name"),
        ("txt2img", {"width": 64}, "prompt"),
        ("img2img", {"prompt": "x", "init_images": []}, "init_images"),
        ("img2img", {"prompt": "x", "init_images": ["@@@"]}, "init_images"),
        ("extra-single-image", {"image": "", "upscaling_resize": 2}, "image"),
        ("extra-single-image", {"image": "aGVsbG8=", "upscaling_resize": 9}, "upscaling_resize"),
        ("extra-single-image", {"image": "aGVsbG8="}, "image"),
        ("png-info", {"image": "not base64!"}, "image"),
    ],
)
def test_bad_input_gets_a_422_detail_list_never_a_500(
    working: LiveServer, working_key: str, http: httpx.Client, path: str, body: dict[str, object], field: str
) -> None:
    reply = http.post(working.url(f"/sdapi/v1/{path}"), json=body, auth=("me", working_key))
    assert reply.status_code == 422, reply.text
    detail = reply.json()["detail"]
    assert isinstance(detail, list) and detail[0]["loc"][-1] == field and detail[0]["msg"], detail


def test_a_missing_or_wrong_key_gets_401(working: LiveServer, http: httpx.Client) -> None:
    for auth in (None, ("me", "sd_wrong-key-0123456789")):
        reply = http.get(working.url("/sdapi/v1/sd-models"), auth=auth)
        assert reply.status_code == 401 and reply.headers["WWW-Authenticate"] == "Basic"
        assert isinstance(reply.json()["detail"], str)
    # The same key as a Bearer token, or as the Basic user name with no password, works too.
    key = working.new_key(Role.USER)
    assert http.get(working.url("/sdapi/v1/samplers"), headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert http.get(working.url("/sdapi/v1/samplers"), auth=(key, "")).status_code == 200
    with pytest.raises(RuntimeError) as refused:
        client_for(working, "sd_wrong-key-0123456789").txt2img(prompt="x", **FAST)
    assert refused.value.args[0] == 401


def test_progress_and_interrupt_touch_only_the_callers_jobs(queue_only: LiveServer) -> None:
    owner_key, other_key = queue_only.new_key(Role.USER), queue_only.new_key(Role.USER)
    queued = httpx.post(
        queue_only.url("/api/v6/images/text2img"),
        json={"key": owner_key, "prompt": "x", "width": 64, "height": 64, "instant_response": "yes"},
    ).json()
    owner, other = client_for(queue_only, owner_key), client_for(queue_only, other_key)
    assert other.get_progress()["state"]["job_count"] == 0
    assert other.interrupt() == {"interrupted": []}
    progress = owner.get_progress()
    assert progress["state"]["job_count"] == 1 and progress["state"]["job"] == f"job({queued['id']})"
    assert progress["current_image"] is None
    assert owner.interrupt() == {"interrupted": [queued["id"]]}
    assert owner.get_progress()["state"]["job_count"] == 0


@pytest.mark.settings(dialect_wait_s=30.0)
def test_an_interrupted_request_answers_with_no_images(queue_only: LiveServer) -> None:
    key = queue_only.new_key(Role.USER)
    api = client_for(queue_only, key)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(api.txt2img, prompt="a house", **FAST)
        deadline = time.monotonic() + 10
        while api.get_progress()["state"]["job_count"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        (job_id,) = api.interrupt()["interrupted"]
        result = pending.result(timeout=10)
    assert result.images == [] and result.info["interrupted"] is True and result.info["job_id"] == job_id


def test_a_timeout_is_an_a1111_error(queue_only: LiveServer, http: httpx.Client) -> None:
    key = queue_only.new_key(Role.USER)
    reply = http.post(queue_only.url("/sdapi/v1/txt2img"), json={"prompt": "x", **FAST}, auth=("me", key))
    assert reply.status_code == 504 and "SDSERVER_DIALECT_WAIT_S" in reply.json()["detail"]
    # The caller's job was cancelled: nothing left queued.
    assert client_for(queue_only, key).get_progress()["state"]["job_count"] == 0


def test_a_dialect_job_is_a_job_like_any_other(working: LiveServer, working_key: str, http: httpx.Client) -> None:
    result = client_for(working, working_key).txt2img(prompt="a lamp", **FAST)
    job_id = result.info["job_id"]
    fetched = http.post(working.url(f"/api/v6/images/fetch/{job_id}"), json={"key": working_key}).json()
    assert fetched["status"] == "success" and fetched["meta"]["prompt"] == "a lamp"
    other = http.post(working.url(f"/api/v6/images/fetch/{job_id}"), json={"key": working.new_key(Role.USER)}).json()
    assert other["status"] == "error"
    admin = working.new_key(Role.ADMIN)
    metrics = http.get(working.url("/metrics"), headers={"key": admin}).text
    assert 'sdserver_jobs{kind="text2img",status="succeeded"}' in metrics
    assert base64.b64decode(result.json["images"][0])[:4] == b"\x89PNG"
    assert Image.open(io.BytesIO(base64.b64decode(result.json["images"][0]))).size == (SIZE, SIZE)


def test_lora_tags_in_the_prompt_name_loras(working: LiveServer, working_key: str, http: httpx.Client) -> None:
    reply = http.post(
        working.url("/sdapi/v1/txt2img"),
        json={"prompt": "a house <lora:no-such-lora:0.7>", **FAST},
        auth=("me", working_key),
    )
    (detail,) = reply.json()["detail"]
    assert reply.status_code == 422 and detail["loc"] == ["body", "prompt"] and "no-such-lora" in detail["msg"]
    assert client_for(working, working_key).get_loras() == []
