"""Stablecog's multipart upload, with its exact error bodies and status codes."""

from __future__ import annotations

import httpx
import pytest

from tests.support.image_files import html_as_png, jpeg_bytes, png_bomb, png_bytes, webp_bytes
from tests.support.live_server import LiveServer

UPLOAD = "/v1/image/upload"
MIB = 1024 * 1024


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("data", "filename"),
    [(png_bytes(33, 21), "a.png"), (jpeg_bytes(), "photo.jpeg"), (webp_bytes(), "x.bin")],
    ids=["png", "jpeg", "webp-with-odd-name"],
)
def test_upload_returns_an_object_url_that_downloads_the_file(
    server: LiveServer, user_key: str, http: httpx.Client, data: bytes, filename: str
) -> None:
    response = http.post(
        server.url(UPLOAD),
        files={"file": (filename, data, "application/octet-stream")},
        headers=bearer(user_key),
    )
    assert response.status_code == 200, response.text
    reply = response.json()
    assert set(reply) == {"object"}
    assert http.get(reply["object"]).content == data
    assert server.services.objects.key_from_url(reply["object"]) is not None


def test_missing_key_is_401_unauthorized(local_server: LiveServer, http: httpx.Client) -> None:
    response = http.post(local_server.url(UPLOAD), files={"file": ("a.png", png_bytes(), "image/png")})
    assert response.status_code == 401
    assert response.json() == {"error": "Unauthorized"}


def test_wrong_key_is_401_unauthorized(local_server: LiveServer, http: httpx.Client) -> None:
    response = http.post(
        local_server.url(UPLOAD),
        files={"file": ("a.png", png_bytes(), "image/png")},
        headers=bearer("sd_nope"),
    )
    assert response.status_code == 401
    assert response.json() == {"error": "Unauthorized"}


def test_no_file_part_is_invalid_file(local_server: LiveServer, user_key: str, http: httpx.Client) -> None:
    response = http.post(
        local_server.url(UPLOAD),
        files={"other": ("a.png", png_bytes(), "image/png")},
        headers=bearer(user_key),
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_file"
    assert "file" in response.json()["description"]


def test_html_disguised_as_png_is_invalid_content_type(
    local_server: LiveServer, user_key: str, http: httpx.Client
) -> None:
    response = http.post(
        local_server.url(UPLOAD),
        files={"file": ("a.png", html_as_png(), "image/png")},
        headers=bearer(user_key),
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_content_type",
        "description": "Content type must be image/jpeg, image/png, or image/webp",
    }


def test_a_decompression_bomb_is_refused(local_server: LiveServer, user_key: str, http: httpx.Client) -> None:
    response = http.post(
        local_server.url(UPLOAD),
        files={"file": ("b.png", png_bomb(30000), "image/png")},
        headers=bearer(user_key),
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_file"
    assert "30000" in response.json()["description"]


def test_a_file_one_byte_over_10_mib_is_413(local_server: LiveServer, user_key: str, http: httpx.Client) -> None:
    data = png_bytes(8, 8)
    data += b"\x00" * (10 * MIB + 1 - len(data))
    response = http.post(
        local_server.url(UPLOAD), files={"file": ("big.png", data, "image/png")}, headers=bearer(user_key)
    )
    assert response.status_code == 413
    assert response.json()["error"] == "parse_error"


def test_a_form_body_that_is_not_multipart_is_invalid_file(
    local_server: LiveServer, user_key: str, http: httpx.Client
) -> None:
    response = http.post(local_server.url(UPLOAD), json={"file": "abc"}, headers=bearer(user_key))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_file"
