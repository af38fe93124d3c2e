"""/openapi.json: a reply schema for every operation, every alias listed under its family tag, error statuses
from the one error table, and live replies that match what is declared."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from sdserver.api.aliases import (
    ALIAS_OF,
    CONTROLNET_PATHS,
    IMG2IMG_PATHS,
    INPAINT_PATHS,
    NSFW_CHECK_PATHS,
    PREFIXES,
    SDK_CLASS_PREFIXES,
    SUPER_RESOLUTION_LIST_PATHS,
    SUPER_RESOLUTION_STRING_PATHS,
    TEXT2IMG_PATHS,
)
from sdserver.api.app import ROUTERS, create_app
from sdserver.api.openapi_tags import ENDPOINT_TAGS, alias_tag
from sdserver.api.replies import error_codes_by_status, install_error_handlers
from sdserver.auth import Role
from sdserver.engines.fake import FakeEngine
from tests.support.live_server import LiveServer, make_settings, run_server, worker_thread
from tests.support.openapi_checks import canonical, operations, reply_schemas, resolve, undeclared_replies

ERROR_ENVELOPE = "#/components/schemas/ErrorEnvelope"


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app = create_app(make_settings(tmp_path_factory.mktemp("openapi"), engines=["test"]))
    return app.openapi()


def test_every_operation_declares_a_reply_schema_that_is_not_a_bare_object(document: dict[str, Any]) -> None:
    assert len(list(operations(document))) > 150
    assert undeclared_replies(document) == []


def test_the_checker_flags_a_bare_reply() -> None:
    bare = {"type": "object", "additionalProperties": True, "title": "Response Text2Img"}
    document = {"paths": {"/x": {"post": {"responses": {"200": {"content": {"application/json": {"schema": bare}}}}}}}}
    assert undeclared_replies(document) == ["POST /x"]
    document["paths"]["/x"]["post"]["responses"] = {"200": {"description": "no content"}}
    assert undeclared_replies(document) == ["POST /x"]


def test_every_served_route_is_listed(document: dict[str, Any]) -> None:
    listed = {(method, path) for method, path, _ in operations(document)}
    for router in ROUTERS:
        for route in router.routes:
            assert isinstance(route, APIRoute)
            path = route.path.replace("{key:path}", "{key}")
            for method in route.methods - {"HEAD"}:
                assert (method, path) in listed, (method, path)


def test_every_alias_path_of_the_contract_is_listed(document: dict[str, Any]) -> None:
    paths = document["paths"]
    families = [
        TEXT2IMG_PATHS,
        IMG2IMG_PATHS,
        INPAINT_PATHS,
        CONTROLNET_PATHS,
        NSFW_CHECK_PATHS,
        SUPER_RESOLUTION_STRING_PATHS,
        SUPER_RESOLUTION_LIST_PATHS,
    ]
    expected = {path for family in families for path in family}
    for prefix in PREFIXES:
        expected |= {f"{prefix}/fetch", f"{prefix}/fetch/{{job_id}}", f"{prefix}/cancel", f"{prefix}/cancel/{{job_id}}"}
    for prefix in SDK_CLASS_PREFIXES:
        expected |= {f"{prefix}/system_details", f"{prefix}/clear_cache", f"{prefix}/update"}
    expected |= {"/api/v3/text2img", "/api/v4/dreambooth", "/api/v7/images/text-to-image", "/api/v3/get_all_models"}
    assert sorted(expected - set(paths)) == []
    assert "get" in paths["/api/v3/fetch/{job_id}"], "the GET form of fetch is listed too"


def test_each_alias_names_its_canonical_operation_and_sits_under_its_family_tag(document: dict[str, Any]) -> None:
    declared_tags = {tag["name"] for tag in document["tags"]}
    aliases = 0
    for method, path, operation in operations(document):
        if canonical(operation):
            assert set(operation["tags"]) <= set(ENDPOINT_TAGS), (method, path, operation["tags"])
            continue
        aliases += 1
        target = document["paths"][operation[ALIAS_OF]]
        same = [candidate for candidate in target.values() if canonical(candidate)]
        assert same, (method, path, "names an operation that is not canonical")
        # The same handler: the same declared replies.
        assert operation["responses"] == same[0]["responses"], (method, path)
        [tag] = operation["tags"]
        assert tag in declared_tags and path.startswith(tag.removeprefix(alias_tag(""))), (path, tag)
    assert aliases > 100


def test_operation_ids_are_unique(document: dict[str, Any]) -> None:
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids))


def test_error_statuses_come_from_the_error_table(document: dict[str, Any]) -> None:
    text2img = document["paths"]["/api/v1/enterprise/text2img"]["post"]["responses"]
    assert set(text2img) == {"200", "400", "401", "404", "408", "413", "422", "429", "500", "503"}
    assert "model_not_found" in text2img["404"]["description"]
    assert "rate_limited" in text2img["429"]["description"]
    for status in set(text2img) - {"200"}:
        assert text2img[status]["content"]["application/json"]["schema"] == {"$ref": ERROR_ENVELOPE}
    # With real_status_codes off (the default) errors answer 200: the 200 schema includes the envelope.
    assert {"$ref": ERROR_ENVELOPE} in reply_schemas({"responses": {"200": text2img["200"]}})[0]["anyOf"]
    assert "404" in document["paths"]["/api/v1/enterprise/fetch/{job_id}"]["post"]["responses"]
    assert "403" in document["paths"]["/api/v1/enterprise/system_details"]["post"]["responses"]
    assert "403" not in document["paths"]["/api/v1/enterprise/upload_image"]["post"]["responses"]
    stablecog = document["paths"]["/v1/image/upload"]["post"]["responses"]
    assert stablecog["401"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/StablecogError"}


def test_no_operation_documents_fastapis_own_validation_body(document: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert "HTTPValidationError" not in str(document["paths"])


def test_error_codes_by_status_groups_codes_and_refuses_unknown_ones() -> None:
    assert error_codes_by_status(["not_found", "model_not_found", "invalid_key", "not_found"]) == {
        401: ["invalid_key"],
        404: ["not_found", "model_not_found"],
    }
    with pytest.raises(KeyError, match="no_such_code"):
        error_codes_by_status(["no_such_code"])


def test_request_bodies_are_shared_components(document: dict[str, Any]) -> None:
    body = document["paths"]["/api/v3/text2img"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/Text2ImgRequest"}
    schema = resolve(document, body["application/json"]["schema"])
    assert {"key", "prompt", "model_id"} <= set(schema["properties"])
    upload = document["components"]["schemas"]["UploadImageRequest"]
    assert upload["properties"]["base64_image"]["description"]


@pytest.fixture(scope="module")
def spine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = make_settings(
        tmp_path_factory.mktemp("spine"), engines=["test"], sync_wait_s=3.0, worker_poll_s=0.05, job_lease_s=3.0
    )
    with run_server(settings) as live, contextlib.ExitStack() as stack:
        stack.enter_context(worker_thread(live, [FakeEngine()], "openapi-worker"))
        yield live


def _submit(http: httpx.Client, live: LiveServer, key: str, **fields: Any) -> httpx.Response:
    body = {"key": key, "prompt": "a lighthouse", "model_id": "test-ok", "width": 64, "height": 64, **fields}
    return http.post(live.url("/api/v1/enterprise/text2img"), json=body)


def test_live_replies_match_their_declared_schemas(spine: LiveServer, http: httpx.Client) -> None:
    """Schemathesis meets few finished jobs; these are the job replies it cannot reach (success, base64, failed,
    cancelled, processing), each checked against the operation that answered it."""
    schema = schemathesis.openapi.from_dict(http.get(spine.url("/openapi.json")).json())
    key = spine.new_key(Role.USER)
    checked: list[str] = []

    def check(path: str, reply: httpx.Response, method: str = "POST") -> dict[str, Any]:
        schema[path][method].validate_response(reply)
        body: dict[str, Any] = reply.json()
        checked.append(body["status"])
        return body

    text2img = "/api/v1/enterprise/text2img"
    done = check(text2img, _submit(http, spine, key))
    assert done["status"] == "success" and done["output"], done
    assert check(text2img, _submit(http, spine, key, base64="yes"))["status"] == "success"
    assert check(text2img, _submit(http, spine, key, model_id="test-raise"))["status"] == "failed"
    queued = check(text2img, _submit(http, spine, key, model_id="test-hang", instant_response="yes"))
    assert queued["status"] == "processing", queued
    fetch_path = "/api/v1/enterprise/fetch/{job_id}"
    check(fetch_path, http.get(spine.url(f"/api/v1/enterprise/fetch/{queued['id']}"), params={"key": key}), "GET")
    cancel = http.post(spine.url(f"/api/v1/enterprise/cancel/{queued['id']}"), json={"key": key})
    check("/api/v1/enterprise/cancel/{job_id}", cancel)
    missing = http.post(spine.url("/api/v1/enterprise/fetch/123456"), json={"key": key})
    assert check(fetch_path, missing)["status"] == "error"
    assert check("/api/v3/text2img", _submit(http, spine, "wrong"))["message"] == "Invalid Api Key"
    assert {"success", "failed", "processing", "error"} <= set(checked)
    # Server management with a live worker holding a model (schemathesis's server has none).
    admin = spine.new_key(Role.ADMIN)
    for name in ("system_details", "get_all_models", "sync_models", "verify_model", "clear_queue", "clear_cache"):
        path = f"/api/v1/enterprise/{name}"
        reply = check(path, http.post(spine.url(path), json={"key": admin, "model_id": "test-ok"}))
        assert reply["status"] in ("ok", "success", "error"), reply
    details = http.post(spine.url("/api/v1/enterprise/system_details"), json={"key": admin}).json()
    assert details["workers"] and details["workers"][0]["worker_id"] == "openapi-worker", details
    # A load this worker never claims: listed as loading (never loaded: no load date), then deleted.
    load = {"key": admin, "model_id": "lora-x", "model_type": "lora", "url": "https://example.com/x.safetensors"}
    started = check("/api/v1/enterprise/load_model", http.post(spine.url("/api/v1/enterprise/load_model"), json=load))
    assert started["state"] == "loading", started
    for name in ("get_all_models", "sync_models", "delete_model"):
        path = f"/api/v1/enterprise/{name}"
        reply = check(path, http.post(spine.url(path), json={"key": admin, "model_id": "lora-x"}))
        assert reply["status"] == "success", reply
        if name != "delete_model":
            assert [model["model_id"] for model in reply["models"]] == ["lora-x"], reply


def test_a_malformed_multipart_body_is_answered_through_the_error_table(spine: LiveServer, http: httpx.Client) -> None:
    reply = http.post(
        spine.url("/api/v1/enterprise/text2img"),
        content=b'--xx\r\nContent-Dis[position: form-data; name="a"\r\n\r\nvalue\r\n--xx--\r\n',
        headers={"content-type": "multipart/form-data; boundary=xx"},
    )
    body = reply.json()
    assert body["status"] == "error" and body["error_code"] == "validation_error", body
    assert body["message"].startswith("body: must be well-formed form data, got "), body
    assert set(body["errors"]) == {"body"}


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/docs/oauth2-redirect"])
def test_docs_pages_name_no_other_server(local_server: LiveServer, http: httpx.Client, page: str) -> None:
    """Not one absolute or protocol-relative URL: the pages load everything from this server (packaged assets)."""
    reply = http.get(local_server.url(page))
    assert re.findall(r"(?:https?:)?//[\w.-]+", reply.text) == []
    if page != "/docs/oauth2-redirect":
        # And the browser loads nothing from elsewhere, even what a bundled script asks for.
        assert "default-src 'self'" in reply.headers["content-security-policy"]
    assert "/openapi.json" in reply.text or page.endswith("redirect")


def test_fastapis_own_parameter_errors_answer_through_the_error_table(tmp_path: Path) -> None:
    """No route today has a typed parameter FastAPI checks; one that does still answers the declared envelope."""
    settings = make_settings(tmp_path)
    app = FastAPI()
    install_error_handlers(app, settings)

    @app.get("/api/v3/typed")
    async def typed(count: int) -> dict[str, int]:
        return {"count": count}

    with TestClient(app) as client:
        body = client.get("/api/v3/typed", params={"count": "many"}).json()
    assert body["status"] == "error" and body["error_code"] == "validation_error", body
    assert body["message"].startswith("count: Input should be a valid integer") and body["message"].endswith(
        "got 'many'"
    ), body
