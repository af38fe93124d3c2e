"""The playground's pages over HTTP: public, self-contained (no external URL), limits from the server."""

from __future__ import annotations

import re

import httpx

from sdserver.api.routes.playground import MAX_SIDE, SIZES
from sdserver.api.schemas_generation import MAX_STEPS
from sdserver.catalog.ids import DEFAULT_UPSCALER
from tests.support.live_server import LiveServer

PAGES = ("/", "/playground", "/playground/playground.js", "/playground/playground.css")
EXTERNAL_URL = re.compile(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", re.IGNORECASE)


def test_pages_are_public_and_reference_nothing_outside_the_server(
    local_server: LiveServer, http: httpx.Client
) -> None:
    for path in PAGES:
        reply = http.get(local_server.url(path))
        assert reply.status_code == 200, path
        assert not EXTERNAL_URL.search(reply.text), f"{path} names an external URL"
        assert "default-src 'self'" in reply.headers["content-security-policy"]
        assert reply.headers["referrer-policy"] == "no-referrer"
    assert http.get(local_server.url("/playground/playground.js")).headers["content-type"].startswith("text/javascript")


def test_landing_page_links_the_playground_and_the_docs(local_server: LiveServer, http: httpx.Client) -> None:
    page = http.get(local_server.url("/")).text
    assert 'href="/playground"' in page and 'href="/docs"' in page


def test_the_playground_page_loads_its_own_script_and_style(local_server: LiveServer, http: httpx.Client) -> None:
    page = http.get(local_server.url("/playground")).text
    assert 'src="/playground/playground.js"' in page and 'href="/playground/playground.css"' in page
    # The key is typed into a password field and kept in sessionStorage only.
    script = http.get(local_server.url("/playground/playground.js")).text
    assert 'type="password"' in page and "sessionStorage" in script
    assert "localStorage" not in script and "document.cookie" not in script


def test_config_carries_the_servers_limits(local_server: LiveServer, http: httpx.Client) -> None:
    config = http.get(local_server.url("/playground/config.json")).json()
    # The largest any family takes (SDXL, SD3 and Flux: 2048); each model's own cap is checked at submit.
    assert config["max_side"] == MAX_SIDE == 2048 and config["max_steps"] == MAX_STEPS
    assert config["sizes"] == list(SIZES) and config["default_upscaler"] == DEFAULT_UPSCALER
    assert DEFAULT_UPSCALER in config["upscalers"]


def test_unknown_playground_files_are_not_found(local_server: LiveServer, http: httpx.Client) -> None:
    assert http.get(local_server.url("/playground/index.html")).status_code == 404
    assert http.get(local_server.url("/playground/../pyproject.toml")).status_code == 404
