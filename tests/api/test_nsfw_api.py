"""`nsfw_image_check` over real HTTP: the image is stored, scored by open_nsfw, and the flag follows the threshold."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from sdserver.api.aliases import NSFW_CHECK_PATHS
from sdserver.auth import Role
from tests.support.http_host import HttpHost, Reply
from tests.support.image_files import encode
from tests.support.live_server import LiveServer
from tests.test_safety import landscape

CHECK = NSFW_CHECK_PATHS[0]


@pytest.fixture(scope="module")
def photo_png() -> bytes:
    return encode(landscape(), "PNG")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def post(http: httpx.Client, live: LiveServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post(live.url(path), json=body)
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


@pytest.mark.parametrize("path", NSFW_CHECK_PATHS)
def test_a_clean_photo_is_not_flagged_and_the_reply_links_the_checked_image(
    local_server: LiveServer, user_key: str, http: httpx.Client, photo_png: bytes, path: str
) -> None:
    reply = post(http, local_server, path, {"key": user_key, "init_image": b64(photo_png)})
    assert set(reply) == {"status", "images", "has_nsfw_concept", "nsfw_score"}
    assert reply["status"] == "success"
    assert reply["has_nsfw_concept"] == [False]
    [score] = reply["nsfw_score"]
    assert isinstance(score, float) and 0.0 <= score < 0.05
    assert isinstance(reply["images"], str)
    assert http.get(reply["images"]).content == photo_png


def test_the_threshold_decides_the_flag_and_leaves_the_score_alone(
    local_server: LiveServer, user_key: str, http: httpx.Client, photo_png: bytes
) -> None:
    default = post(http, local_server, CHECK, {"key": user_key, "init_image": b64(photo_png)})
    [score] = default["nsfw_score"]
    at_score = post(http, local_server, CHECK, {"key": user_key, "init_image": b64(photo_png), "threshold": score})
    assert at_score["has_nsfw_concept"] == [True], "a score equal to the threshold counts as NSFW"
    as_text = post(http, local_server, CHECK, {"key": user_key, "init_image": b64(photo_png), "threshold": "0"})
    assert (as_text["has_nsfw_concept"], as_text["nsfw_score"]) == ([True], [score])
    strict = post(http, local_server, CHECK, {"key": user_key, "init_image": b64(photo_png), "threshold": 1})
    assert strict["has_nsfw_concept"] == [False]


@pytest.mark.settings(nsfw_threshold=0.0)
def test_without_a_threshold_the_server_setting_applies(
    local_server: LiveServer, user_key: str, http: httpx.Client, photo_png: bytes
) -> None:
    reply = post(http, local_server, CHECK, {"key": user_key, "init_image": b64(photo_png), "threshold": "null"})
    assert reply["has_nsfw_concept"] == [True]


@pytest.mark.parametrize(
    "value",
    ["data:image/png;base64,{}", "data:image/png;base64, {}", "{}"],
    ids=["data-url", "data-url-with-space", "raw-base64"],
)
def test_base64_inputs_in_every_spelling_are_checked(
    local_server: LiveServer, user_key: str, http: httpx.Client, photo_png: bytes, value: str
) -> None:
    reply = post(http, local_server, CHECK, {"key": user_key, "init_image": value.format(b64(photo_png))})
    assert reply["status"] == "success", reply
    assert reply["has_nsfw_concept"] == [False]


def test_a_url_this_server_issued_is_accepted_and_form_bodies_work(
    local_server: LiveServer, user_key: str, http: httpx.Client, photo_png: bytes
) -> None:
    uploaded = post(
        http, local_server, "/api/v1/enterprise/upload_image", {"key": user_key, "base64_image": b64(photo_png)}
    )
    response = http.post(local_server.url(CHECK), data={"key": user_key, "init_image": uploaded["image_url"]})
    reply = response.json()
    assert reply["status"] == "success", reply
    assert http.get(reply["images"]).content == photo_png


@pytest.mark.settings(fetch_allowlist=["127.0.0.1"])
def test_an_allow_listed_http_url_is_fetched_and_checked(
    local_server: LiveServer, user_key: str, http: httpx.Client, photo_png: bytes
) -> None:
    with HttpHost({"/photo.png": Reply(photo_png, "image/png")}) as host:
        reply = post(http, local_server, CHECK, {"key": user_key, "init_image": host.url("/photo.png")})
    assert reply["status"] == "success", reply
    assert http.get(reply["images"]).content == photo_png


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"threshold": 1.5}, "threshold: must be between 0 and 1, got 1.5"),
        ({"threshold": -0.25}, "threshold: must be between 0 and 1, got -0.25"),
        ({"threshold": "high"}, "threshold: must be a number, got 'high'"),
        ({"init_image": None}, "init_image: is required, got nothing"),
        ({"init_image": "null"}, "init_image: is required, got 'null'"),
        ({"init_image": "not an image!"}, "init_image: not valid base64 or a data URL"),
        ({"init_image": "http://10.0.0.1/cat.png"}, "Unable to fetch image from provided URL"),
        ({"init_image": "http://169.254.169.254/latest/meta-data/"}, "Unable to fetch image from provided URL"),
    ],
    ids=[
        "threshold-1.5",
        "threshold-negative",
        "threshold-text",
        "image-null",
        "image-null-text",
        "not-an-image",
        "private",
        "metadata",
    ],
)
def test_bad_requests_name_the_field_the_rule_and_the_value(
    local_server: LiveServer, user_key: str, http: httpx.Client, photo_png: bytes, fields: dict[str, Any], message: str
) -> None:
    body = {"key": user_key, "init_image": b64(photo_png), **fields}
    reply = post(http, local_server, CHECK, body)
    assert reply["status"] == "error"
    assert reply["message"] == message


def test_a_missing_image_field_is_reported_in_the_errors_bag(
    local_server: LiveServer, user_key: str, http: httpx.Client
) -> None:
    reply = post(http, local_server, CHECK, {"key": user_key, "threshold": 0.5})
    assert reply["status"] == "error"
    assert reply["errors"] == {"init_image": ["is required, got nothing"]}


def test_a_private_url_is_refused_without_being_fetched(
    local_server: LiveServer, user_key: str, http: httpx.Client, photo_png: bytes
) -> None:
    with HttpHost({"/photo.png": Reply(photo_png, "image/png")}) as host:
        reply = post(http, local_server, CHECK, {"key": user_key, "init_image": host.url("/photo.png")})
        assert reply["message"] == "Unable to fetch image from provided URL"
        assert "loopback" in reply["errors"]["init_image"][0]
        assert host.requests == []


@pytest.mark.parametrize("key", [None, "not-a-key"], ids=["no-key", "wrong-key"])
def test_an_invalid_key_is_refused(
    local_server: LiveServer, http: httpx.Client, photo_png: bytes, key: str | None
) -> None:
    body = {"init_image": b64(photo_png)} | ({"key": key} if key else {})
    reply = post(http, local_server, CHECK, body)
    assert (reply["status"], reply["message"]) == ("error", "Invalid Api Key")
    assert "images" not in reply


def test_admin_keys_may_check_too(local_server: LiveServer, http: httpx.Client, photo_png: bytes) -> None:
    admin = local_server.new_key(Role.ADMIN)
    reply = post(http, local_server, "/api/v3/nsfw_image_check", {"key": admin, "init_image": b64(photo_png)})
    assert reply["status"] == "success"
