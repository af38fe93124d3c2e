"""The playground in a real headless Chromium (Debian's package, driven by Playwright) against a live server and
a worker running the diffusers engine on a tiny model: fill the form, submit, wait for the picture.

Screenshots go to the test's tmp dir and to tests/artifacts/ (ignored by git)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, Request, Route, expect, sync_playwright

from sdserver.auth import Role
from sdserver.catalog.ids import DEFAULT_UPSCALER
from sdserver.engines.factory import build_engines
from sdserver.engines.upscale.tiny import write_official_weights
from tests.support.image_files import png_bytes
from tests.support.live_server import LiveServer, make_settings, run_server, worker_thread
from tests.support.tiny_sd import make_tiny_model

MODEL = "tiny-sd"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
KEY_STORAGE = "sdserver.playground.key"
WAIT_MS = 60_000
PROGRESS_RECORDER = """
window.progressLines = [];
new MutationObserver(() => {
  const line = document.getElementById("progress-text");
  if (line && line.textContent && window.progressLines.at(-1) !== line.textContent) {
    window.progressLines.push(line.textContent);
  }
}).observe(document, { subtree: true, childList: true, characterData: true });
"""


def _chromium_or_skip() -> Path:
    """Chromium from Debian's package; scripts/install.sh installs it with the `test` extra. Skips only where it
    cannot be installed (no apt-get, or not root), and says so loudly; a missing browser elsewhere fails."""
    if CHROMIUM.exists():
        return CHROMIUM
    can_install = shutil.which("apt-get") is not None and os.geteuid() == 0
    message = f"{CHROMIUM} is missing: run `apt-get install -y chromium` (scripts/install.sh test does it as root)"
    if can_install:
        pytest.fail(message)
    pytest.skip(f"BROWSER TEST NOT RUN: {message}; this machine cannot install it (no apt-get or not root)")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A live API and a worker thread running the real diffusers and upscale engines on tiny seeded weights."""
    data_dir = tmp_path_factory.mktemp("playground")
    make_tiny_model(data_dir / "models", MODEL)
    upscalers = data_dir / "models" / "upscalers"
    upscalers.mkdir(parents=True)
    write_official_weights(upscalers, DEFAULT_UPSCALER, "params")
    settings = make_settings(data_dir, engines=["diffusers", "upscale"], worker_poll_s=0.05)
    with run_server(settings) as server:
        services = server.services
        with worker_thread(server, build_engines(services.settings, services.objects), "w1", join_s=30.0):
            yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = _chromium_or_skip()
    with sync_playwright() as playwright:
        # Playwright adds --no-sandbox itself (chromium_sandbox defaults to off), which root needs.
        browser = playwright.chromium.launch(executable_path=str(executable), headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, live: LiveServer) -> Iterator[Page]:
    """A fresh browser context whose requests may only go to the live server (anything else fails the test)."""
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
    # Records each progress line the page shows, to check the live progress after the job is done.
    page.add_init_script(PROGRESS_RECORDER)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    yield page
    assert context.cookies() == [], "the playground must not set cookies"
    context.close()
    assert outside == [], f"the page reached outside the server: {outside}"
    assert problems == [], f"script errors: {problems}"


def save_screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / name)
    return shot


def connect(page: Page, live: LiveServer, key: str) -> None:
    page.goto(live.url("/playground"))
    page.fill("#api-key", key)
    page.click("#connect")
    expect(page.locator("#key-state")).to_contain_text("Connected")
    expect(page.locator("#model_id")).to_have_value(MODEL)


def fill_small_job(page: Page, prompt: str) -> None:
    page.fill("#prompt", prompt)
    page.select_option("#width", "64")
    page.select_option("#height", "64")
    page.fill("#num_inference_steps", "2")
    page.fill("#seed", "42")


def submitted_bodies(page: Page, path: str) -> list[dict[str, Any]]:
    """Collect the JSON bodies the page posts to `path`, checking the key travels in the header only."""
    bodies: list[dict[str, Any]] = []

    def record(request: Request) -> None:
        if request.url.endswith(path):
            assert "key=" not in request.url and request.headers.get("key")
            bodies.append(json.loads(request.post_data or "{}"))

    page.on("request", record)
    return bodies


def wait_for_picture(page: Page, live: LiveServer, key: str, http: httpx.Client, fetch_prefix: str) -> str:
    """Wait until the first output picture has loaded; check it is the job's output URL; return that URL."""
    picture = page.locator("#results img.output").first
    expect(picture).to_be_visible(timeout=WAIT_MS)
    page.wait_for_function(
        "() => { const img = document.querySelector('#results img.output');"
        " return img && img.complete && img.naturalWidth > 0; }",
        timeout=WAIT_MS,
    )
    src = picture.get_attribute("src") or ""
    job_id = (picture.get_attribute("alt") or "").rsplit(" ", 1)[-1]
    fetched = http.post(live.url(f"{fetch_prefix}/fetch/{job_id}"), json={"key": key}).json()
    assert fetched["status"] == "success", fetched
    assert src == fetched["output"][0]
    return src


def test_text2img_from_the_form_shows_the_picture_and_the_code(
    page: Page, live: LiveServer, http: httpx.Client, tmp_path: Path
) -> None:
    key = live.new_key(Role.USER)
    bodies = submitted_bodies(page, "/api/v6/images/text2img")
    connect(page, live, key)
    fill_small_job(page, "a red house")
    page.click("#submit")
    src = wait_for_picture(page, live, key, http, "/api/v6/images")
    shot = save_screenshot(page, tmp_path, "playground-text2img.png")

    assert Image.open(io.BytesIO(http.get(src).content)).size == (64, 64)
    assert bodies == [
        {
            "model_id": MODEL,
            "prompt": "a red house",
            "width": 64,
            "height": 64,
            "num_inference_steps": 2,
            "guidance_scale": 7.5,
            "scheduler": "UniPCMultistepScheduler",
            "seed": 42,
            "samples": 1,
            "instant_response": "yes",
        }
    ]
    curl = page.text_content("#snippet-curl") or ""
    assert live.url("/api/v6/images/text2img") in curl and '"key: $KEY"' in curl and '"a red house"' in curl
    page.click("[data-snippet=python]")
    python = page.text_content("#snippet-python") or ""
    assert "requests.post(" in python and 'os.environ["KEY"]' in python
    assert key not in curl + python
    # The snippets run as shown: curl submits the same job; the Python script submits, polls and prints.
    assert run_curl(curl, key, tmp_path)["status"] in ("processing", "success")
    script = tmp_path / "snippet.py"
    script.write_text(python)
    printed = subprocess.run(
        [sys.executable, str(script)], env=snippet_env(key), capture_output=True, text=True, timeout=60
    )
    assert printed.stdout.startswith("success ['" + live.base_url), printed.stdout + printed.stderr
    # The key is kept for this tab only.
    assert page.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") == key
    assert page.evaluate("localStorage.length") == 0
    assert shot.stat().st_size > 0
    # instant_response answers `processing` at once, so the page showed progress before the picture.
    progress = page.evaluate("window.progressLines")
    assert progress and "%" in progress[0] and "ETA" in progress[0], progress


def test_inpaint_sends_the_drawn_mask(page: Page, live: LiveServer, http: httpx.Client, tmp_path: Path) -> None:
    key = live.new_key(Role.USER)
    bodies = submitted_bodies(page, "/api/v6/images/inpaint")
    connect(page, live, key)
    page.click("[data-mode=inpaint]")
    fill_small_job(page, "a blue door")
    init = tmp_path / "init.png"
    init.write_bytes(png_bytes(96, 64, color=(30, 120, 200)))
    page.set_input_files("#init_file", str(init))
    expect(page.locator("#canvas-empty")).to_be_hidden()
    # A stroke across the left half of the picture.
    box = page.locator("#mask-canvas").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    page.click("#submit")
    wait_for_picture(page, live, key, http, "/api/v6/images")
    save_screenshot(page, tmp_path, "playground-inpaint.png")

    assert len(bodies) == 1
    mask = decode_data_url(bodies[0]["mask_image"]).convert("L")
    assert mask.size == (64, 64)
    assert mask.getpixel((16, 32)) == 255 and mask.getpixel((56, 32)) == 0
    assert decode_data_url(bodies[0]["init_image"]).size == (64, 64)
    curl = page.text_content("#snippet-curl") or ""
    assert "base64 -w0 mask.png" in curl and "--data @-" in curl
    # The curl snippet reads init.png and mask.png from the working directory.
    (tmp_path / "mask.png").write_bytes(png_bytes(64, 64, color=(255, 255, 255)))
    init.write_bytes(png_bytes(64, 64))
    assert run_curl(curl, key, tmp_path)["status"] in ("processing", "success")


def test_img2img_fits_the_picture_to_the_chosen_size(
    page: Page, live: LiveServer, http: httpx.Client, tmp_path: Path
) -> None:
    key = live.new_key(Role.USER)
    bodies = submitted_bodies(page, "/api/v6/images/img2img")
    connect(page, live, key)
    page.click("[data-mode=img2img]")
    fill_small_job(page, "a green field")
    page.fill("#strength", "0.5")
    init = tmp_path / "wide.png"
    init.write_bytes(png_bytes(200, 100, color=(40, 160, 60)))
    page.set_input_files("#init_file", str(init))
    expect(page.locator("#canvas-empty")).to_be_hidden()
    page.click("#submit")
    wait_for_picture(page, live, key, http, "/api/v6/images")

    assert [body["strength"] for body in bodies] == [0.5]
    fitted = decode_data_url(bodies[0]["init_image"]).convert("RGB")
    assert fitted.size == (64, 64) and fitted.getpixel((32, 32)) == (40, 160, 60)
    assert "mask_image" not in bodies[0]


def test_upscale_from_the_form(page: Page, live: LiveServer, http: httpx.Client, tmp_path: Path) -> None:
    key = live.new_key(Role.USER)
    bodies = submitted_bodies(page, "/api/v6/image_editing/super_resolution")
    connect(page, live, key)
    page.click("[data-mode=upscale]")
    expect(page.locator("#upscaler")).to_have_value(DEFAULT_UPSCALER)
    page.select_option("#scale", "2")
    picture = tmp_path / "input.png"
    picture.write_bytes(png_bytes(40, 30, color=(220, 180, 40)))
    page.set_input_files("#init_file", str(picture))
    page.wait_for_function("() => document.getElementById('snippet-curl').textContent.includes('input.png')")
    page.click("#submit")
    src = wait_for_picture(page, live, key, http, "/api/v6/image_editing")
    save_screenshot(page, tmp_path, "playground-upscale.png")

    assert Image.open(io.BytesIO(http.get(src).content)).size == (80, 60)
    assert [(body["model_id"], body["scale"]) for body in bodies] == [(DEFAULT_UPSCALER, 2)]
    assert decode_data_url(bodies[0]["init_image"]).size == (40, 30)


def test_api_errors_are_shown_in_the_page(page: Page, live: LiveServer) -> None:
    page.goto(live.url("/playground"))
    page.fill("#api-key", "not-a-key")
    page.click("#connect")
    expect(page.locator("#error")).to_contain_text("Invalid Api Key")


def snippet_env(key: str) -> dict[str, str]:
    """The shell a user runs a snippet in: KEY set; proxies dropped (the server is on loopback)."""
    return {name: value for name, value in os.environ.items() if "proxy" not in name.lower()} | {"KEY": key}


def run_curl(snippet: str, key: str, cwd: Path) -> dict[str, Any]:
    """Run the snippet's submit command (the part before the polling hint) in bash; return the JSON reply."""
    submit = snippet.split("\n\n# While", 1)[0]
    done = subprocess.run(
        ["bash", "-c", submit], cwd=cwd, env=snippet_env(key), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    reply: dict[str, Any] = json.loads(done.stdout)
    return reply


def decode_data_url(value: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(value.split(",", 1)[1])))
