"""Contract 3.5 walked path by path: every alias real clients call reaches the right handler with the right reply.

The table is written out from the contract on purpose (not imported from `sdserver.api.aliases`), so dropping an
alias from the server's table fails here.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdserver.auth import Role
from sdserver.engines.fake import FakeEngine
from sdserver.jobs import JobKind
from tests.support.image_files import png_bytes
from tests.support.live_server import LiveServer, make_settings, run_server, worker_thread

# (path, job kind it must create, prefix whose fetch the reply links to)
GENERATION_ALIASES: list[tuple[str, JobKind, str]] = [
    ("/api/v1/enterprise/text2img", JobKind.TEXT2IMG, "/api/v1/enterprise"),
    ("/api/v1/enterprise/images/text2img", JobKind.TEXT2IMG, "/api/v1/enterprise/images"),
    ("/api/v1/enterprise/txt2img/text2img", JobKind.TEXT2IMG, "/api/v1/enterprise/txt2img"),
    ("/api/v3/text2img", JobKind.TEXT2IMG, "/api/v3"),
    ("/api/v4/dreambooth", JobKind.TEXT2IMG, "/api/v4/dreambooth"),
    ("/api/v6/images/text2img", JobKind.TEXT2IMG, "/api/v6/images"),
    ("/api/v6/realtime/text2img", JobKind.TEXT2IMG, "/api/v6/realtime"),
    ("/api/v7/images/text-to-image", JobKind.TEXT2IMG, "/api/v7/images"),
    ("/api/v1/enterprise/img2img", JobKind.IMG2IMG, "/api/v1/enterprise"),
    ("/api/v1/enterprise/images/img2img", JobKind.IMG2IMG, "/api/v1/enterprise/images"),
    ("/api/v3/img2img", JobKind.IMG2IMG, "/api/v3"),
    ("/api/v4/dreambooth/img2img", JobKind.IMG2IMG, "/api/v4/dreambooth"),
    ("/api/v6/images/img2img", JobKind.IMG2IMG, "/api/v6/images"),
    ("/api/v6/realtime/img2img", JobKind.IMG2IMG, "/api/v6/realtime"),
    ("/api/v7/images/image-to-image", JobKind.IMG2IMG, "/api/v7/images"),
    ("/api/v1/enterprise/inpaint", JobKind.INPAINT, "/api/v1/enterprise"),
    ("/api/v1/enterprise/images/inpaint", JobKind.INPAINT, "/api/v1/enterprise/images"),
    ("/api/v3/inpaint", JobKind.INPAINT, "/api/v3"),
    ("/api/v4/dreambooth/inpaint", JobKind.INPAINT, "/api/v4/dreambooth"),
    ("/api/v6/images/inpaint", JobKind.INPAINT, "/api/v6/images"),
    ("/api/v6/realtime/inpaint", JobKind.INPAINT, "/api/v6/realtime"),
    ("/api/v7/images/inpaint", JobKind.INPAINT, "/api/v7/images"),
]

# Fetch under every family clients poll, in the spelling they use.
FETCH_PREFIXES = [
    "/api/v1/enterprise",
    "/api/v1/enterprise/images",
    "/api/v1/enterprise/txt2img",
    "/api/v1/enterprise/image_editing",
    "/api/v1/enterprise/super_resolution",
    "/api/v3",
    "/api/v4/dreambooth",
    "/api/v5",
    "/api/v6/images",
    "/api/v6/image_editing",
    "/api/v6/realtime",
    "/api/v7/images",
]

UPLOAD_ALIASES: list[tuple[str, dict[str, Any], str]] = [
    ("/api/v1/enterprise/upload_image", {"image_type": "png"}, "image_url"),
    ("/api/v3/base64_crop", {"crop": "true"}, "link"),
    ("/api/v6/base64_to_url", {}, "output"),
    ("/api/v6/image_editing/base64_to_url", {}, "output"),
]


@pytest.fixture(scope="module")
def spine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One live API plus a worker thread on the test engine, shared by the walk (it only adds jobs)."""
    tmp_path: Path = tmp_path_factory.mktemp("aliases")
    settings = make_settings(tmp_path, engines=["test"], sync_wait_s=5.0, worker_poll_s=0.05)
    with run_server(settings) as live, worker_thread(live, [FakeEngine()], "alias-worker"):
        yield live


@pytest.fixture(scope="module")
def key(spine: LiveServer) -> str:
    return spine.new_key(Role.USER)


@pytest.fixture(scope="module")
def http_client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30, trust_env=False) as client:
        yield client


def _image() -> str:
    return base64.b64encode(png_bytes(64, 64)).decode()


def _generation_body(kind: JobKind, key: str) -> dict[str, Any]:
    body: dict[str, Any] = {"key": key, "prompt": "a lighthouse", "model_id": "test-ok", "width": 64, "height": 64}
    if kind in (JobKind.IMG2IMG, JobKind.INPAINT):
        body["init_image"] = _image()
    if kind is JobKind.INPAINT:
        body["mask_image"] = _image()
    return body


@pytest.mark.parametrize(("path", "kind", "prefix"), GENERATION_ALIASES, ids=[row[0] for row in GENERATION_ALIASES])
def test_generation_alias_reaches_its_handler(
    spine: LiveServer, key: str, http_client: httpx.Client, path: str, kind: JobKind, prefix: str
) -> None:
    reply = http_client.post(spine.url(path), json=_generation_body(kind, key)).json()
    assert reply["status"] == "success", reply
    assert isinstance(reply["output"], list) and len(reply["output"]) == 1
    job = spine.services.jobs.get(int(reply["id"]), owner_key_id=None)
    assert job.kind is kind
    assert reply["meta"]["id"] == str(reply["id"])
    # The result can be fetched under the family the client called.
    fetched = http_client.post(spine.url(f"{prefix}/fetch/{reply['id']}"), json={"key": key}).json()
    assert fetched["status"] == "success" and fetched["output"] == reply["output"]


def test_inpaint_aliases_need_their_mask(spine: LiveServer, key: str, http_client: httpx.Client) -> None:
    """The inpaint handler (not img2img's) serves every inpaint alias: it refuses a body without a mask."""
    for path, kind, _ in GENERATION_ALIASES:
        if kind is not JobKind.INPAINT:
            continue
        body = _generation_body(JobKind.IMG2IMG, key)
        reply = http_client.post(spine.url(path), json=body).json()
        assert reply["status"] == "error" and "mask_image" in reply["errors"], (path, reply)


@pytest.mark.parametrize("prefix", FETCH_PREFIXES)
def test_fetch_and_cancel_exist_under_every_family(
    spine: LiveServer, key: str, http_client: httpx.Client, prefix: str
) -> None:
    reply = http_client.post(spine.url("/api/v3/text2img"), json=_generation_body(JobKind.TEXT2IMG, key)).json()
    job_id = reply["id"]
    by_path = http_client.post(spine.url(f"{prefix}/fetch/{job_id}"), json={"key": key}).json()
    by_body = http_client.post(spine.url(f"{prefix}/fetch"), json={"key": key, "request_id": str(job_id)}).json()
    assert by_path["status"] == by_body["status"] == "success"
    assert by_path["output"] == by_body["output"] == reply["output"]
    unknown = http_client.post(spine.url(f"{prefix}/fetch/999999"), json={"key": key}).json()
    assert unknown == {"status": "error", "message": "Request not found"} | {
        field: unknown[field] for field in unknown if field not in ("status", "message")
    }
    cancelled = http_client.post(spine.url(f"{prefix}/cancel/{job_id}"), json={"key": key}).json()
    assert cancelled["status"] == "success" and cancelled["job_status"] == "succeeded"


@pytest.mark.parametrize(("path", "extra", "link_field"), UPLOAD_ALIASES, ids=[row[0] for row in UPLOAD_ALIASES])
def test_upload_aliases_return_a_stored_image(
    spine: LiveServer, key: str, http_client: httpx.Client, path: str, extra: dict[str, Any], link_field: str
) -> None:
    body = {
        "key": key,
        "base64_image": _image(),
        "base64_string": _image(),
        "image": _image(),
        "init_image": _image(),
        **extra,
    }
    reply = http_client.post(spine.url(path), json=body).json()
    assert reply["status"] == "success", reply
    link = reply[link_field]
    url = link[0] if isinstance(link, list) else link
    download = http_client.get(url)
    assert download.status_code == 200 and download.content.startswith(b"\x89PNG")


# Every path contract 3.5 names, with the handler that must serve it (function name of the route's endpoint).
CONTRACT_ROUTES: list[tuple[str, str]] = [
    *[(path, kind.value) for path, kind, _ in GENERATION_ALIASES],
    ("/api/v1/enterprise/controlnet", "controlnet"),
    ("/api/v1/enterprise/images/controlnet", "controlnet"),
    ("/api/v5/controlnet", "controlnet"),
    ("/api/v6/images/controlnet", "controlnet"),
    ("/api/v1/enterprise/super_resolution", "super_resolution"),
    ("/api/v3/super_resolution", "super_resolution"),
    ("/api/v6/image_editing/super_resolution", "super_resolution"),
    ("/api/v1/enterprise/image_editing/super_resolution", "super_resolution"),
    ("/api/v1/enterprise/super_resolution/make", "super_resolution"),
    ("/api/v3/base64_crop", "base64_crop"),
    ("/api/v6/image_editing/base64_to_url", "base64_to_url"),
    ("/api/v1/enterprise/nsfw_image_check", "nsfw_image_check"),
    ("/api/v3/nsfw_image_check", "nsfw_image_check"),
    ("/api/v1/enterprise/upload_image", "upload_image"),
    *[(f"{prefix}/fetch/{{job_id}}", "fetch") for prefix in FETCH_PREFIXES],
    *[(f"{prefix}/fetch", "fetch") for prefix in FETCH_PREFIXES],
]


def test_every_contract_path_is_routed_to_its_handler() -> None:
    from fastapi.routing import APIRoute

    from sdserver.api.app import ROUTERS

    handlers: dict[str, str] = {}
    for router in ROUTERS:
        for route in router.routes:
            if isinstance(route, APIRoute) and "POST" in route.methods:
                handlers.setdefault(route.path, route.endpoint.__name__)
    missing = [path for path, _ in CONTRACT_ROUTES if path not in handlers]
    assert missing == []
    wrong = {path: handlers[path] for path, handler in CONTRACT_ROUTES if handler not in handlers[path]}
    assert wrong == {}
