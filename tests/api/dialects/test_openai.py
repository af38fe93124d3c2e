"""The real `openai` SDK, unchanged but for its base URL and key, against a live server with a tiny model; and
OpenAI-shaped errors through the same routes."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from sdserver.auth import Role
from tests.api.dialects.conftest import MODEL, SIZE
from tests.support.live_server import LiveServer

NATIVE = {"num_inference_steps": 2, "seed": 7}


def client_for(live: LiveServer, key: str) -> openai.OpenAI:
    # The changes an existing app makes: base URL and key (no retries, so a refusal shows at once).
    return openai.OpenAI(base_url=live.url("/v1"), api_key=key, max_retries=0)


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def rgba_png(alpha_box: tuple[int, int, int, int] | None = None) -> bytes:
    """A red square; `alpha_box` is made fully transparent (OpenAI's 'edit here')."""
    image = Image.new("RGBA", (SIZE, SIZE), (200, 30, 30, 255))
    if alpha_box is not None:
        image.paste((0, 0, 0, 0), alpha_box)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_generate_returns_b64_images_at_the_requested_size(working: LiveServer, working_key: str) -> None:
    reply = client_for(working, working_key).images.generate(
        model="dall-e-3",
        prompt="a red house",
        n=2,
        size=f"{SIZE}x{SIZE}",
        response_format="b64_json",
        extra_body=NATIVE,
    )
    assert len(reply.data) == 2
    for item in reply.data:
        assert item.b64_json is not None and item.revised_prompt == "a red house"
        assert decoded(base64.b64decode(item.b64_json)).size == (SIZE, SIZE)
    assert reply.created > 0


def test_generate_with_a_url_reply_and_our_model_id(working: LiveServer, working_key: str, http: httpx.Client) -> None:
    reply = client_for(working, working_key).images.generate(
        model=MODEL, prompt="a blue boat", size="80x64", extra_body=NATIVE
    )
    (item,) = reply.data
    assert item.url is not None and item.url.startswith(working.base_url)
    assert decoded(http.get(item.url).content).size == (80, 64)


def test_edit_with_a_mask_repaints_the_transparent_area(working: LiveServer, working_key: str) -> None:
    reply = client_for(working, working_key).images.edit(
        image=("house.png", rgba_png(), "image/png"),
        mask=("mask.png", rgba_png((16, 16, 48, 48)), "image/png"),
        prompt="a window",
        # gpt-image models answer in base64 without being asked, as OpenAI's do.
        model="gpt-image-1",
        extra_body=NATIVE,
    )
    (item,) = reply.data
    assert item.b64_json is not None
    assert decoded(base64.b64decode(item.b64_json)).size == (SIZE, SIZE)


def test_edit_without_a_mask_and_a_variation_redraw_the_image(working: LiveServer, working_key: str) -> None:
    client = client_for(working, working_key)
    opaque = rgba_png()
    edited = client.images.edit(image=("a.png", opaque, "image/png"), prompt="a cat", extra_body=NATIVE)
    varied = client.images.create_variation(
        image=("a.png", opaque, "image/png"), response_format="b64_json", extra_body=NATIVE
    )
    assert edited.data[0].url and varied.data[0].b64_json
    assert decoded(base64.b64decode(varied.data[0].b64_json)).size == (SIZE, SIZE)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompt": "x", "size": "big"}, 400, "size"),
        ({"prompt": "x", "n": 9}, 400, "n"),
        ({"prompt": "x", "response_format": "gif"}, 400, "response_format"),
        ({"prompt": "x", "steps": "many"}, 400, "steps"),
        ({"size": "64x64"}, 400, "prompt"),
        ({"prompt": "x", "model": "no-such-model"}, 404, "model"),
        ({"prompt": "x", "size": "64000x64"}, 400, "size"),
    ],
)
def test_bad_input_gets_an_openai_error_never_a_500(
    working: LiveServer, working_key: str, http: httpx.Client, body: dict[str, object], status: int, param: str
) -> None:
    jobs_before = working.job_count()
    reply = http.post(
        working.url("/v1/images/generations"), json=body, headers={"Authorization": f"Bearer {working_key}"}
    )
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]
    assert working.job_count() == jobs_before


def test_the_sdk_raises_its_own_errors(working: LiveServer, working_key: str) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        client_for(working, "sd_wrong-key-0123456789").images.generate(prompt="x")
    assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as missing:
        client_for(working, working_key).images.generate(prompt="x", model="nope")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad_mask:
        client_for(working, working_key).images.edit(
            image=("a.png", rgba_png(), "image/png"), mask=("m.png", b"not an image", "image/png"), prompt="x"
        )
    assert isinstance(bad_mask.value.body, dict) and bad_mask.value.body["param"] == "mask"


def test_a_timeout_and_the_per_key_cap_get_openai_errors(queue_only: LiveServer) -> None:
    key = queue_only.new_key(Role.USER)
    client = client_for(queue_only, key)
    with pytest.raises(openai.APIStatusError) as timed_out:
        client.images.generate(prompt="a house", size="64x64")
    assert timed_out.value.status_code == 504 and timed_out.value.code == "job_timeout"
    # The timed-out job was cancelled: two queued jobs by other means fill the cap of 2.
    for _ in range(2):
        httpx.post(
            queue_only.url("/api/v6/images/text2img"),
            json={"key": key, "prompt": "x", "width": 64, "height": 64, "instant_response": "yes"},
        )
    with pytest.raises(openai.RateLimitError) as capped:
        client.images.generate(prompt="a house", size="64x64")
    assert capped.value.status_code == 429 and capped.value.code == "rate_limited"


def test_the_model_list_names_our_models(working: LiveServer, working_key: str) -> None:
    assert MODEL in [model.id for model in client_for(working, working_key).models.list()]
