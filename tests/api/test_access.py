"""Authentication sources, error replies with and without real status codes, CORS and health."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from sdserver.auth import Role
from tests.support.image_files import png_bytes
from tests.support.live_server import LiveServer

UPLOAD = "/api/v1/enterprise/upload_image"


def image_b64() -> str:
    return base64.b64encode(png_bytes(8, 8)).decode()


@pytest.mark.parametrize("source", ["body", "header", "bearer", "query", "form", "json-labelled-form"])
def test_the_key_is_accepted_from_every_source(
    local_server: LiveServer, user_key: str, http: httpx.Client, source: str
) -> None:
    url = local_server.url(UPLOAD)
    body = {"base64_image": image_b64()}
    if source == "body":
        response = http.post(url, json={**body, "key": user_key})
    elif source == "header":
        response = http.post(url, json=body, headers={"key": user_key})
    elif source == "bearer":
        response = http.post(url, json=body, headers={"Authorization": f"Bearer {user_key}"})
    elif source == "query":
        response = http.post(url, json=body, params={"key": user_key})
    elif source == "form":
        response = http.post(url, data={**body, "key": user_key})
    else:
        # What `curl -d '{...}'` sends: a JSON body under curl's default form content type.
        raw = json.dumps({**body, "key": user_key}).encode()
        response = http.post(url, content=raw, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.json()["status"] == "success"


def test_the_body_key_wins_over_a_header_key(local_server: LiveServer, user_key: str, http: httpx.Client) -> None:
    response = http.post(
        local_server.url(UPLOAD),
        json={"key": "sd_wrong_key_in_body", "base64_image": image_b64()},
        headers={"key": user_key},
    )
    assert response.json()["message"] == "Invalid Api Key"


@pytest.mark.parametrize("key", [None, "", "sd_not_a_real_key"], ids=["missing", "empty", "wrong"])
def test_missing_or_wrong_key_is_refused_with_the_vendor_message(
    local_server: LiveServer, http: httpx.Client, key: str | None
) -> None:
    body = {"base64_image": image_b64()}
    if key is not None:
        body["key"] = key
    response = http.post(local_server.url(UPLOAD), json=body)
    assert response.status_code == 200
    reply = response.json()
    assert reply["status"] == "error"
    assert reply["message"] == "Invalid Api Key"
    assert reply["error_code"] == "invalid_key"


def test_a_revoked_key_stops_working_at_once(local_server: LiveServer, http: httpx.Client) -> None:
    key, secret = local_server.services.keys.create("soon gone", Role.USER)
    ok = http.post(local_server.url(UPLOAD), json={"key": secret, "base64_image": image_b64()})
    assert ok.json()["status"] == "success"
    local_server.services.keys.revoke(key.id)
    refused = http.post(local_server.url(UPLOAD), json={"key": secret, "base64_image": image_b64()})
    assert refused.json()["message"] == "Invalid Api Key"


@pytest.mark.settings(real_status_codes=True)
@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"base64_image": "x"}, 401, "invalid_key"),
        ({"key": "KEY", "base64_image": "***"}, 400, "not_base64"),
        ({"key": "KEY"}, 400, "validation_error"),
    ],
    ids=["no-key", "not-base64", "missing-field"],
)
def test_real_status_codes_when_switched_on(
    local_server: LiveServer, user_key: str, http: httpx.Client, body: dict[str, str], status: int, code: str
) -> None:
    if body.get("key") == "KEY":
        body = {**body, "key": user_key}
    response = http.post(local_server.url(UPLOAD), json=body)
    assert response.status_code == status
    assert response.json()["error_code"] == code


def test_healthz_needs_no_key(local_server: LiveServer, http: httpx.Client) -> None:
    response = http.get(local_server.url("/healthz"))
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_cors_preflight_and_headers(local_server: LiveServer, user_key: str, http: httpx.Client) -> None:
    preflight = http.options(
        local_server.url(UPLOAD),
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,key",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] in ("*", "https://app.example")
    response = http.post(
        local_server.url(UPLOAD),
        json={"key": user_key, "base64_image": image_b64()},
        headers={"Origin": "https://app.example"},
    )
    assert response.headers["access-control-allow-origin"] in ("*", "https://app.example")


def test_files_route_refuses_paths_the_server_did_not_make(local_server: LiveServer, http: httpx.Client) -> None:
    secret_file = local_server.services.settings.data_dir / "sdserver.db"
    assert secret_file.exists()
    for path in [
        "/files/../sdserver.db",
        "/files/%2e%2e/sdserver.db",
        "/files/sdserver.db",
        "/files/uploads/x.png",
    ]:
        response = http.get(local_server.url(path))
        assert response.status_code == 404, path
        assert b"SQLite" not in response.content


def test_a_tampered_temp_link_is_refused(local_server: LiveServer, user_key: str, http: httpx.Client) -> None:
    reply = http.post(
        local_server.url(UPLOAD), json={"key": user_key, "base64_image": image_b64(), "temp": "yes"}
    ).json()
    url = reply["image_url"]
    assert http.get(url).status_code == 200
    tampered = url[:-1] + ("0" if url[-1] != "0" else "1")
    assert http.get(tampered).status_code == 404
    assert http.get(url.split("?")[0]).status_code == 404
