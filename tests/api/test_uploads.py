"""The ModelsLab upload endpoints over real HTTP, on the local store and on a real S3 server."""

from __future__ import annotations

import base64
import io
import os
from typing import Any

import httpx
import pytest
from PIL import Image

from sdserver.images import ImageLimits, load_image_input
from sdserver.netguard import FetchPolicy
from tests.support.image_files import html_as_png, jpeg_bytes, png_bomb, png_bytes, webp_bytes
from tests.support.live_server import LiveServer

MIB = 1024 * 1024


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# (path, image field, how the reply names the URL)
ENDPOINTS = [
    ("/api/v1/enterprise/upload_image", "base64_image", "image_url"),
    ("/api/v3/base64_crop", "image", "link"),
    ("/api/v6/base64_to_url", "base64_string", "output"),
    ("/api/v6/image_editing/base64_to_url", "init_image", "output"),
]
ENDPOINT_IDS = ["upload_image", "base64_crop", "base64_to_url", "image_editing_base64_to_url"]


def url_of(reply: dict[str, Any], url_field: str) -> str:
    value = reply[url_field]
    if url_field == "output":
        assert isinstance(value, list) and len(value) == 1
        return str(value[0])
    return str(value)


def post(http: httpx.Client, live: LiveServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post(live.url(path), json=body)
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


@pytest.mark.parametrize(("path", "field", "url_field"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_upload_stores_the_exact_bytes_and_the_url_downloads_them(
    server: LiveServer, user_key: str, http: httpx.Client, path: str, field: str, url_field: str
) -> None:
    original = png_bytes(70, 50, color=(10, 200, 30))
    reply = post(http, server, path, {"key": user_key, field: b64(original), "image_type": "png"})
    assert reply["status"] == "success"
    url = url_of(reply, url_field)
    downloaded = http.get(url)
    assert downloaded.status_code == 200
    assert downloaded.content == original
    key = server.services.objects.key_from_url(url)
    assert key is not None and server.services.objects.get(key) == original


def test_upload_image_reply_matches_the_vendor_shape(server: LiveServer, user_key: str, http: httpx.Client) -> None:
    reply = post(http, server, "/api/v1/enterprise/upload_image", {"key": user_key, "base64_image": b64(png_bytes())})
    assert reply["status"] == "success"
    assert reply["message"] == "image uploaded"
    assert reply["image_url"].endswith(".png") or ".png?" in reply["image_url"]


@pytest.mark.parametrize(
    ("data", "ext"),
    [(jpeg_bytes(), "jpg"), (webp_bytes(), "webp"), (png_bytes(), "png")],
    ids=["jpeg", "webp", "png"],
)
def test_stored_type_follows_the_bytes_not_the_declared_type(
    server: LiveServer, user_key: str, http: httpx.Client, data: bytes, ext: str
) -> None:
    reply = post(
        http,
        server,
        "/api/v1/enterprise/upload_image",
        {"key": user_key, "base64_image": b64(data), "image_type": "png"},
    )
    key = server.services.objects.key_from_url(reply["image_url"])
    assert key is not None and key.endswith("." + ext)
    assert http.get(reply["image_url"]).content == data


def test_base64_crop_centre_crops_to_512_square(server: LiveServer, user_key: str, http: httpx.Client) -> None:
    # Three vertical stripes: red | green | blue. A centre square of a 300×100 image is all green.
    stripes = Image.new("RGB", (300, 100), (0, 255, 0))
    stripes.paste((255, 0, 0), (0, 0, 100, 100))
    stripes.paste((0, 0, 255), (200, 0, 300, 100))
    buffer = io.BytesIO()
    stripes.save(buffer, "PNG")
    reply = post(
        http,
        server,
        "/api/v3/base64_crop",
        {"key": user_key, "image": "data:image/png;base64," + b64(buffer.getvalue()), "crop": "true"},
    )
    assert reply["status"] == "success"
    assert reply["messege"] == reply["message"] == "image uploaded"
    assert isinstance(reply["request_id"], int)
    cropped = Image.open(io.BytesIO(http.get(reply["link"]).content))
    assert cropped.size == (512, 512)
    r, g, b = cropped.convert("RGB").getpixel((256, 256))  # type: ignore[misc]
    assert g > 200 and r < 30 and b < 30
    r, g, b = cropped.convert("RGB").getpixel((5, 256))  # type: ignore[misc]
    assert g > 200, "the left edge of the crop must come from the centre stripe"


@pytest.mark.parametrize("flag", ["false", False, "no", 0, None], ids=["str-false", "bool", "no", "zero", "absent"])
def test_base64_crop_without_crop_keeps_the_image(
    local_server: LiveServer, user_key: str, http: httpx.Client, flag: object
) -> None:
    original = png_bytes(300, 100)
    body: dict[str, Any] = {"key": user_key, "image": b64(original)}
    if flag is not None:
        body["crop"] = flag
    reply = post(http, local_server, "/api/v3/base64_crop", body)
    assert http.get(reply["link"]).content == original


def test_data_url_with_a_space_after_the_comma(local_server: LiveServer, user_key: str, http: httpx.Client) -> None:
    original = jpeg_bytes()
    reply = post(
        http,
        local_server,
        "/api/v1/enterprise/upload_image",
        {"key": user_key, "base64_image": "data:image/jpeg;base64, " + b64(original)},
    )
    assert http.get(reply["image_url"]).content == original


def test_form_encoded_and_query_parameters_are_merged(
    local_server: LiveServer, user_key: str, http: httpx.Client
) -> None:
    original = png_bytes(20, 20)
    response = http.post(
        local_server.url("/api/v6/base64_to_url") + f"?key={user_key}",
        data={"base64_string": b64(original)},
    )
    reply = response.json()
    assert reply["status"] == "success", reply
    assert http.get(reply["output"][0]).content == original


@pytest.mark.parametrize("multipart", [False, True], ids=["urlencoded", "multipart"])
def test_a_form_field_over_one_mib_is_read(
    local_server: LiveServer, user_key: str, http: httpx.Client, multipart: bool
) -> None:
    """Starlette's own limit (1 MiB per field) would refuse any real base64 image sent as a form."""
    original = io.BytesIO()
    # Noise does not compress: a PNG of about 1.2 MB, 1.6 MB in base64.
    Image.frombytes("RGB", (640, 640), os.urandom(640 * 640 * 3)).save(original, format="PNG")
    encoded = b64(original.getvalue())
    assert len(encoded) > 1024 * 1024
    fields = {"key": user_key, "base64_string": encoded}
    if multipart:
        response = http.post(local_server.url("/api/v6/base64_to_url"), data=fields, files={"unused": b"x"})
    else:
        response = http.post(local_server.url("/api/v6/base64_to_url"), data=fields)
    reply = response.json()
    assert reply["status"] == "success", reply
    assert http.get(reply["output"][0]).content == original.getvalue()


def test_json_body_wins_over_query_parameters(local_server: LiveServer, user_key: str, http: httpx.Client) -> None:
    response = http.post(
        local_server.url("/api/v3/base64_crop") + "?crop=no",
        json={"key": user_key, "image": b64(png_bytes(300, 100)), "crop": "yes"},
    )
    link = response.json()["link"]
    assert Image.open(io.BytesIO(http.get(link).content)).size == (512, 512)


def test_an_issued_url_is_accepted_as_an_input_without_a_network_fetch(
    server: LiveServer, user_key: str, http: httpx.Client
) -> None:
    """Our own links point at loopback, which the SSRF guard refuses: they must be read from the store."""
    original = png_bytes(40, 30, color=(1, 2, 3))
    first = post(http, server, "/api/v1/enterprise/upload_image", {"key": user_key, "base64_image": b64(original)})
    second = post(
        http, server, "/api/v1/enterprise/upload_image", {"key": user_key, "base64_image": first["image_url"]}
    )
    assert second["status"] == "success", second
    assert http.get(second["image_url"]).content == original
    services = server.services
    image = _load(services.objects, first["image_url"], services.image_limits, services.fetch_policy)
    assert (image.width, image.height, image.data) == (40, 30, original)


def _load(store: Any, url: str, limits: ImageLimits, policy: FetchPolicy) -> Any:
    import asyncio

    return asyncio.run(load_image_input(url, field="init_image", limits=limits, policy=policy, issued=store))


def test_temp_upload_gives_an_expiring_link_that_downloads(
    server: LiveServer, user_key: str, http: httpx.Client
) -> None:
    original = png_bytes(10, 10)
    reply = post(
        http,
        server,
        "/api/v1/enterprise/upload_image",
        {"key": user_key, "base64_image": b64(original), "temp": "yes"},
    )
    url = reply["image_url"]
    assert "expires=" in url.lower() or "x-amz-expires=" in url.lower()
    assert http.get(url).content == original


@pytest.mark.parametrize(("path", "field", "url_field"), ENDPOINTS, ids=ENDPOINT_IDS)
@pytest.mark.parametrize(
    ("value", "code", "fragment"),
    [
        ("not base64 at all!!", "not_base64", "not valid base64"),
        (
            b64(b"\x00\x01\x02 just some bytes that are no image" * 3),
            "unsupported_image_type",
            "PNG, JPEG or WebP",
        ),
        ("data:image/png;base64," + b64(html_as_png()), "unsupported_image_type", "PNG, JPEG or WebP"),
        (b64(png_bomb(30000)), "image_too_many_pixels", "30000"),
        ("", "validation_error", "is required"),
        ("null", "validation_error", "is required"),
    ],
    ids=["not-base64", "not-an-image", "html-as-png", "png-bomb", "empty", "null-string"],
)
def test_bad_images_get_a_clear_error_naming_the_field(
    server: LiveServer,
    user_key: str,
    http: httpx.Client,
    path: str,
    field: str,
    url_field: str,
    value: str,
    code: str,
    fragment: str,
) -> None:
    reply = post(http, server, path, {"key": user_key, field: value})
    assert reply["status"] == "error"
    assert reply["error_code"] == code
    assert reply["message"].startswith(field + ":")
    assert fragment in reply["message"]
    assert field in reply["errors"]
    assert _stored_uploads(server) == 0


def _stored_uploads(live: LiveServer) -> int:
    import sqlalchemy as sa

    from sdserver.database import uploads

    with live.services.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(uploads)).scalar_one())


@pytest.mark.parametrize(("path", "field", "url_field"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_an_image_one_byte_over_10_mib_is_refused(
    local_server: LiveServer, user_key: str, http: httpx.Client, path: str, field: str, url_field: str
) -> None:
    # A real PNG header followed by padding: the byte cap must trigger before any decoding.
    data = png_bytes(8, 8)
    data = data + b"\x00" * (10 * MIB + 1 - len(data))
    reply = post(http, local_server, path, {"key": user_key, field: b64(data)})
    assert reply["status"] == "error"
    assert reply["error_code"] == "image_too_large"
    assert "10485760" in reply["message"]


@pytest.mark.parametrize(("path", "field", "url_field"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_an_image_of_exactly_the_limit_is_not_refused_for_its_size(
    local_server: LiveServer, user_key: str, http: httpx.Client, path: str, field: str, url_field: str
) -> None:
    data = png_bytes(8, 8)
    data = data + b"\x00" * (10 * MIB - len(data))
    reply = post(http, local_server, path, {"key": user_key, field: b64(data)})
    assert reply.get("error_code") != "image_too_large"


def test_image_type_outside_the_options_is_a_validation_error(
    local_server: LiveServer, user_key: str, http: httpx.Client
) -> None:
    reply = post(
        http,
        local_server,
        "/api/v1/enterprise/upload_image",
        {"key": user_key, "base64_image": b64(png_bytes()), "image_type": "gif"},
    )
    assert reply["status"] == "error"
    assert reply["message"] == "image_type: must be one of 'png', 'jpeg' or 'jpg', got 'gif'"
    assert reply["errors"] == {"image_type": ["must be one of 'png', 'jpeg' or 'jpg', got 'gif'"]}


def test_a_bad_flag_value_names_the_field_rule_and_value(
    local_server: LiveServer, user_key: str, http: httpx.Client
) -> None:
    reply = post(
        http,
        local_server,
        "/api/v3/base64_crop",
        {"key": user_key, "image": b64(png_bytes()), "crop": "maybe"},
    )
    assert reply["status"] == "error"
    assert reply["message"] == "crop: must be a flag (yes/no, true/false, 1/0), got 'maybe'"


@pytest.mark.parametrize("body", ["[1, 2]", "{not json", '"just a string"'], ids=["array", "broken", "string"])
def test_a_body_that_is_not_a_json_object_is_refused(
    local_server: LiveServer, user_key: str, http: httpx.Client, body: str
) -> None:
    response = http.post(
        local_server.url("/api/v1/enterprise/upload_image"),
        content=body,
        headers={"content-type": "application/json", "key": user_key},
    )
    assert response.status_code == 200
    reply = response.json()
    assert reply["status"] == "error" and reply["message"].startswith("body: must be a JSON object")


def test_json_without_a_json_content_type_is_read(local_server: LiveServer, user_key: str, http: httpx.Client) -> None:
    import json

    original = png_bytes(5, 5)
    response = http.post(
        local_server.url("/api/v1/enterprise/upload_image"),
        content=json.dumps({"key": user_key, "base64_image": b64(original)}),
        headers={"content-type": "text/plain"},
    )
    assert response.json()["status"] == "success"
