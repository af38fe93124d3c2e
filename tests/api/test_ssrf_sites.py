"""Every server-side fetch of a client URL goes through the SSRF guard: one table of hostile targets, walked over
every field that takes a URL (uploads have their own walk in test_upload_urls.py; webhooks in test_webhooks.py)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdserver.auth import Role
from tests.support.http_host import HttpHost, Redirect, Reply
from tests.support.image_files import png_bytes
from tests.support.live_server import LiveServer, make_settings, run_server

PNG = base64.b64encode(png_bytes(64, 64)).decode()

# (path, base body, the URL field under test)
SITES: list[tuple[str, dict[str, Any], str]] = [
    ("/api/v1/enterprise/img2img", {"prompt": "a cat", "model_id": "test-ok"}, "init_image"),
    ("/api/v1/enterprise/inpaint", {"prompt": "a cat", "model_id": "test-ok", "init_image": PNG}, "mask_image"),
    ("/api/v1/enterprise/inpaint", {"prompt": "a cat", "model_id": "test-ok", "mask_image": PNG}, "init_image"),
    ("/api/v1/enterprise/super_resolution", {"scale": 2}, "url"),
]
SITE_IDS = [f"{path}:{field}" for path, _, field in SITES]

# (hostile URL, what the refusal must name)
TARGETS: list[tuple[str, str]] = [
    ("http://127.0.0.1:9/x.png", "loopback"),
    ("http://[::1]:9/x.png", "loopback"),
    ("http://localhost:9/x.png", "resolves to"),
    ("http://10.1.2.3/x.png", "private"),
    ("http://192.168.0.10/x.png", "private"),
    ("http://[fd12::1]/x.png", "private"),
    ("http://169.254.1.1/x.png", "link-local"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://0.0.0.0/x.png", "unspecified"),
    ("http://2130706433/x.png", "127.0.0.1"),
    ("http://0177.0.0.1/x.png", "127.0.0.1"),
    ("http://[::ffff:10.0.0.1]/x.png", "IPv6 form of 10.0.0.1"),
    ("ftp://example.com/x.png", "only http and https"),
    ("file:///etc/passwd", "only http and https"),
]
TARGET_IDS = [url for url, _ in TARGETS]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    """No worker: every case must be refused before a job exists."""
    tmp_path: Path = tmp_path_factory.mktemp("ssrf")
    with run_server(make_settings(tmp_path, engines=["test"], sync_wait_s=0.0)) as live:
        yield live, live.new_key(Role.USER)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30, trust_env=False) as http:
        yield http


@pytest.mark.parametrize(("url", "reason"), TARGETS, ids=TARGET_IDS)
@pytest.mark.parametrize(("path", "body", "field"), SITES, ids=SITE_IDS)
def test_hostile_urls_are_refused_at_every_fetch_site(
    guarded: tuple[LiveServer, str],
    client: httpx.Client,
    path: str,
    body: dict[str, Any],
    field: str,
    url: str,
    reason: str,
) -> None:
    live, key = guarded
    before = live.services.jobs.count_active(_owner(live, key))
    reply = client.post(live.url(path), json={"key": key, **body, field: url}).json()
    assert reply["status"] == "error", reply
    assert reply["message"] == "Unable to fetch image from provided URL"
    assert any(reason in text for text in reply["errors"][field]), reply["errors"]
    assert live.services.jobs.count_active(_owner(live, key)) == before, "no job may be queued"


@pytest.mark.parametrize(("path", "body", "field"), SITES, ids=SITE_IDS)
def test_a_loopback_host_is_never_contacted(
    guarded: tuple[LiveServer, str], client: httpx.Client, path: str, body: dict[str, Any], field: str
) -> None:
    live, key = guarded
    with HttpHost({"/x.png": Reply(png_bytes(), "image/png")}) as host:
        reply = client.post(live.url(path), json={"key": key, **body, field: host.url("/x.png")}).json()
        assert host.requests == []
    assert reply["status"] == "error" and "loopback" in reply["errors"][field][0]


@pytest.mark.parametrize(("path", "body", "field"), SITES, ids=SITE_IDS)
def test_a_redirect_from_an_allowed_host_to_a_private_one_is_refused(
    tmp_path: Path, client: httpx.Client, path: str, body: dict[str, Any], field: str
) -> None:
    with run_server(make_settings(tmp_path, engines=["test"], sync_wait_s=0.0, fetch_allowlist=["127.0.0.1"])) as live:
        key = live.new_key(Role.USER)
        with HttpHost({"/hop.png": Redirect("http://10.0.0.1/x.png")}) as host:
            reply = client.post(live.url(path), json={"key": key, **body, field: host.url("/hop.png")}).json()
            assert host.requests_to("/hop.png"), "the allowed host is asked first"
    assert reply["status"] == "error"
    assert "redirect" in reply["errors"][field][0] and "private" in reply["errors"][field][0]


def _owner(live: LiveServer, key: str) -> int:
    found = live.services.keys.verify(key)
    assert found is not None
    return found.id
