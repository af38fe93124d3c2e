"""Image fields given as URLs: fetched through the SSRF guard, refused for loopback, private and metadata."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.test_uploads import ENDPOINT_IDS, ENDPOINTS
from tests.support.http_host import HttpHost, Redirect, Reply
from tests.support.image_files import png_bytes
from tests.support.live_server import LiveServer


def post(http: httpx.Client, live: LiveServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    reply: dict[str, Any] = http.post(live.url(path), json=body).json()
    return reply


@pytest.mark.parametrize(("path", "field", "url_field"), ENDPOINTS, ids=ENDPOINT_IDS)
@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.1/cat.png", "private"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://[::1]/cat.png", "loopback"),
        ("file:///etc/passwd", "only http and https"),
    ],
    ids=["private-10", "metadata", "loopback-v6", "file-scheme"],
)
def test_urls_to_internal_addresses_are_refused(
    local_server: LiveServer,
    user_key: str,
    http: httpx.Client,
    path: str,
    field: str,
    url_field: str,
    url: str,
    reason: str,
) -> None:
    reply = post(http, local_server, path, {"key": user_key, field: url})
    assert reply["status"] == "error"
    assert reply["message"] == "Unable to fetch image from provided URL"
    assert reply["error_code"] == "fetch_failed"
    assert any(reason in text for text in reply["errors"][field]), reply["errors"]


@pytest.mark.parametrize(("path", "field", "url_field"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_a_loopback_image_host_is_refused_and_never_contacted(
    local_server: LiveServer, user_key: str, http: httpx.Client, path: str, field: str, url_field: str
) -> None:
    with HttpHost({"/cat.png": Reply(png_bytes(), "image/png")}) as host:
        reply = post(http, local_server, path, {"key": user_key, field: host.url("/cat.png")})
        assert reply["status"] == "error"
        assert "loopback" in reply["errors"][field][0]
        assert host.requests == []


@pytest.mark.settings(fetch_allowlist=["127.0.0.1"])
@pytest.mark.parametrize(("path", "field", "url_field"), ENDPOINTS, ids=ENDPOINT_IDS)
@pytest.mark.parametrize(
    "target",
    ["http://10.0.0.1/x.png", "http://169.254.169.254/latest/meta-data/", "http://[::1]:1/x.png"],
    ids=["to-private", "to-metadata", "to-loopback-v6"],
)
def test_a_redirect_from_an_allowed_host_to_an_internal_address_is_refused(
    local_server: LiveServer,
    user_key: str,
    http: httpx.Client,
    path: str,
    field: str,
    url_field: str,
    target: str,
) -> None:
    with HttpHost({"/hop.png": Redirect(target)}) as host:
        reply = post(http, local_server, path, {"key": user_key, field: host.url("/hop.png")})
        assert host.requests_to("/hop.png"), "the allowed host should have been asked"
    assert reply["status"] == "error"
    assert reply["message"] == "Unable to fetch image from provided URL"
    assert "redirect" in reply["errors"][field][0]


@pytest.mark.settings(fetch_allowlist=["127.0.0.1"])
@pytest.mark.parametrize(("path", "field", "url_field"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_an_allow_listed_host_is_fetched_and_stored(
    local_server: LiveServer, user_key: str, http: httpx.Client, path: str, field: str, url_field: str
) -> None:
    original = png_bytes(21, 13, color=(9, 9, 200))
    with HttpHost({"/a.png": Redirect("/b.png"), "/b.png": Reply(original, "image/png")}) as host:
        reply = post(http, local_server, path, {"key": user_key, field: "  " + host.url("/a.png") + " "})
    assert reply["status"] == "success", reply
    url = reply[url_field][0] if url_field == "output" else reply[url_field]
    assert http.get(url).content == original


@pytest.mark.settings(fetch_allowlist=["127.0.0.1"])
def test_an_unreachable_url_gives_the_vendor_message(
    local_server: LiveServer, user_key: str, http: httpx.Client
) -> None:
    with HttpHost({}) as host:
        reply = post(
            http, local_server, "/api/v6/base64_to_url", {"key": user_key, "base64_string": host.url("/no.png")}
        )
    assert reply["message"] == "Unable to fetch image from provided URL"
    assert "404" in reply["errors"]["base64_string"][0]
