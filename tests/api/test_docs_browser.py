"""/docs and /redoc in a real headless Chromium with every request outside the server refused: both render the
whole /openapi.json (every operation, aliases included) from the packaged assets alone."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Request, Route, expect, sync_playwright

from tests.api.test_playground_browser import ARTIFACTS, _chromium_or_skip
from tests.support.live_server import LiveServer, make_settings, run_server
from tests.support.openapi_checks import operations

WAIT_MS = 60_000


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with run_server(make_settings(tmp_path_factory.mktemp("docs"), engines=["test"])) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = _chromium_or_skip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, live: LiveServer) -> Iterator[Page]:
    """A page whose requests may only go to the live server; script errors and outside requests fail the test."""
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    outside: list[str] = []

    def only_this_server(route: Route, request: Request) -> None:
        if request.url.startswith(live.base_url + "/") or request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            outside.append(request.url)
            route.abort()

    context.route("**/*", only_this_server)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    yield page
    context.close()
    assert outside == [], f"the page reached outside the server: {outside}"
    assert problems == [], f"script errors: {problems}"


def _save(page: Page, tmp_path: Path, name: str) -> None:
    shot = tmp_path / name
    page.screenshot(path=str(shot))
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / name)


def test_swagger_ui_lists_every_operation_offline(page: Page, live: LiveServer, tmp_path: Path) -> None:
    document = page.request.get(live.url("/openapi.json")).json()
    # Swagger UI shows an operation under each of its tags (/metrics: server management and metrics).
    count = sum(len(operation["tags"]) for _, _, operation in operations(document))
    page.goto(live.url("/docs"))
    expect(page.locator(".opblock")).to_have_count(count, timeout=WAIT_MS)
    expect(page.locator(".opblock-tag", has_text="aliases /api/v3")).to_be_visible()
    # An operation opens with its declared replies: the example of the 200 is a job's success envelope.
    page.locator("#operations-generation-text2img_api_v1_enterprise_text2img_post .opblock-summary").click()
    success = page.locator(".responses-wrapper tr.response[data-code='200']")
    expect(success).to_contain_text('"generationTime"', timeout=WAIT_MS)
    expect(page.locator(".responses-wrapper tr.response[data-code='429']")).to_contain_text("rate_limited")
    _save(page, tmp_path, "docs-swagger.png")


def test_redoc_renders_offline(page: Page, live: LiveServer, tmp_path: Path) -> None:
    page.goto(live.url("/redoc"))
    expect(page.locator("[role=menuitem]", has_text="Text to image").first).to_be_attached(timeout=WAIT_MS)
    expect(page.get_by_text("aliases /api/v3").first).to_be_attached(timeout=WAIT_MS)
    _save(page, tmp_path, "docs-redoc.png")
