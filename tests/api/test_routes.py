"""Every route: key required except health, docs and served files; the OpenAPI document describes them."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi.routing import APIRoute

from sdserver.api.app import ROUTERS
from sdserver.api.dialect_errors import A1111_PREFIX, OPENAI_PREFIXES
from tests.support.live_server import LiveServer
from tests.support.openapi_checks import resolve

PUBLIC_PREFIXES = ("/healthz", "/files/", "/docs", "/redoc", "/openapi.json")


def _routes() -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for router in ROUTERS:
        for route in router.routes:
            assert isinstance(route, APIRoute)
            pairs.extend((method, route.path) for method in sorted(route.methods - {"HEAD"}))
    return pairs


def test_every_route_but_health_docs_and_files_needs_a_key(local_server: LiveServer, http: httpx.Client) -> None:
    checked = 0
    for method, path in _routes():
        if path.startswith(PUBLIC_PREFIXES):
            continue
        url = local_server.url(path.replace("{job_id}", "1"))
        reply = http.request(method, url, json={})
        assert reply.status_code in (200, 401), (method, path, reply.status_code)
        body = reply.json()
        expected = {"error": "Unauthorized"} if path.startswith("/v1/") else None
        if path.startswith(OPENAI_PREFIXES):
            assert reply.status_code == 401 and body["error"]["code"] == "invalid_api_key", (method, path, body)
        elif path.startswith(A1111_PREFIX):
            assert reply.status_code == 401 and body["detail"] == "Incorrect username or password", (method, path)
        elif expected is not None:
            assert body == expected, (method, path, body)
        else:
            assert body["message"] == "Invalid Api Key", (method, path, body)
        checked += 1
    assert checked > 50, "the walk should cover every alias"


@pytest.mark.parametrize("path", ["/healthz", "/docs", "/redoc", "/openapi.json"])
def test_public_routes_answer_without_a_key(local_server: LiveServer, http: httpx.Client, path: str) -> None:
    assert http.get(local_server.url(path)).status_code == 200


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_every_asset_from_this_server(local_server: LiveServer, http: httpx.Client, page: str) -> None:
    html = http.get(local_server.url(page)).text
    # Every URL in the page is ours: nothing from a CDN, so the docs work on a machine without internet access.
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html)
    assert urls, html
    assert not [url for url in urls if re.match(r"(?:https?:)?//", url)], urls
    for url in urls:
        if url.startswith("/docs-assets/"):
            asset = http.get(local_server.url(url))
            assert asset.status_code == 200 and len(asset.content) > 1000, url


def test_openapi_documents_each_endpoint_with_its_fields(local_server: LiveServer, http: httpx.Client) -> None:
    spec = http.get(local_server.url("/openapi.json")).json()
    paths = spec["paths"]
    for documented in [
        "/api/v1/enterprise/upload_image",
        "/api/v3/base64_crop",
        "/api/v6/base64_to_url",
        "/api/v6/image_editing/base64_to_url",
        "/v1/image/upload",
        "/api/v1/enterprise/text2img",
        "/api/v1/enterprise/super_resolution",
        "/api/v1/enterprise/fetch/{job_id}",
        "/api/v1/enterprise/cancel/{job_id}",
    ]:
        assert documented in paths, documented
    assert paths["/api/v3/text2img"]["post"]["x-alias-of"] == "/api/v1/enterprise/text2img"
    body = resolve(
        spec, paths["/api/v1/enterprise/upload_image"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    )
    assert {"key", "base64_image", "image_type"} <= set(body["properties"])
    assert body["properties"]["base64_image"]["description"]
