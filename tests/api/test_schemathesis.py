"""Schemathesis over the live app's /openapi.json: every canonical operation, no 5xx, replies match the declared
schema (closed shapes: an undeclared field fails too).

Budget: SDSERVER_FUZZ_EXAMPLES cases per operation and generation mode (default 25, derandomized, so the normal
test run is fast and repeatable); set it to a few hundred for a long run.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance as schema_conformance

from sdserver.api.aliases import ALIAS_OF
from sdserver.api.app import ROUTERS
from sdserver.auth import Role
from tests.support.live_server import LiveServer, make_settings, run_server

EXAMPLES = int(os.environ.get("SDSERVER_FUZZ_EXAMPLES", "25"))
# Routes whose documented reply is not the JSON they send: Prometheus text on /metrics, the stored file's
# bytes on /files/{key}. Schemathesis still checks them for 5xx.
NOT_JSON = {("GET", "/metrics"), ("GET", "/files/{key}")}
CASES_RUN: dict[str, int] = {}


def documented_operations(*, canonical_only: bool) -> list[tuple[str, str]]:
    """Every (method, path) the app lists in its OpenAPI document, read from the route table; `canonical_only`
    leaves out the aliases (`x-alias-of`): they run the same handler with the same declared replies."""
    pairs: list[tuple[str, str]] = []
    for router in ROUTERS:
        for route in router.routes:
            assert isinstance(route, APIRoute)
            if not route.include_in_schema or (canonical_only and ALIAS_OF in (route.openapi_extra or {})):
                continue
            # OpenAPI drops Starlette's converters: /files/{key:path} is documented as /files/{key}.
            path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
            pairs.extend((method, path) for method in sorted((route.methods or set()) - {"HEAD"}))
    return pairs


OPERATIONS = documented_operations(canonical_only=True)


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    # Job routes answer `processing` at once (no worker, no wait); the cap keeps the queue table small.
    with tempfile.TemporaryDirectory() as data_dir:
        settings = make_settings(Path(data_dir), engines=["test"], sync_wait_s=0, max_active_jobs_per_key=20)
        with run_server(settings) as server:
            yield server


@pytest.fixture(scope="module", autouse=True)
def report_case_count(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the module, write the figure the issue note asks for (cases sent) to the terminal."""
    yield
    total = sum(CASES_RUN.values())
    negative = sum(count for name, count in CASES_RUN.items() if name.startswith("negative"))
    operations = len({name.split(" ", 1)[1] for name in CASES_RUN})
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is not None and CASES_RUN:
        with capture.global_and_fixture_disabled():
            print(
                f"\nschemathesis: {total} cases ({negative} negative) over {operations} operations, "
                f"at most {EXAMPLES} per operation and mode"
            )


@pytest.fixture(scope="module")
def admin_key(live: LiveServer) -> str:
    # An admin key reaches every handler body; user keys on admin routes are covered by test_admin_routes.py.
    return live.new_key(Role.ADMIN, "schemathesis")


@pytest.fixture(scope="module")
def schema(live: LiveServer) -> Any:
    return schemathesis.openapi.from_url(live.url("/openapi.json"))


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        http.trust_env = False
        yield http


# Schema keys that describe a value without constraining it.
_ANNOTATIONS = {"type", "title", "description", "examples"}


def _free_string(schema: dict[str, Any]) -> bool:
    options = schema.get("anyOf", [schema])
    return all(option.get("type") in ("string", "null") and option.keys() <= _ANNOTATIONS for option in options)


def has_invalid_inputs(definition: dict[str, Any]) -> bool:
    """False when every input is a free string and there is no body: no request can break the schema."""
    if "requestBody" in definition:
        return True
    return not all(_free_string(parameter.get("schema", {})) for parameter in definition.get("parameters", []))


def with_key(case: Case[Any], key: str) -> None:
    """Put the valid key where the server reads it first (the body), and in the header for bodiless calls."""
    if isinstance(case.body, dict):
        case.body["key"] = key
    case.headers = {**(case.headers or {}), "key": key}


def test_the_route_table_and_the_openapi_document_agree(schema: Any) -> None:
    listed = {(method.upper(), path) for path, methods in schema.raw_schema["paths"].items() for method in methods}
    assert listed == set(documented_operations(canonical_only=False))


# Long runs outgrow the suite's 300 s per-test timeout: ~0.3 s per case at worst (update_s3), two modes.
@pytest.mark.timeout(max(300, EXAMPLES * 2))
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_server_error_and_replies_match_the_schema(
    schema: Any, live: LiveServer, admin_key: str, session: requests.Session, method: str, path: str
) -> None:
    operation = schema[path][method]
    checks = [not_a_server_error] if (method, path) in NOT_JSON else [not_a_server_error, schema_conformance]
    modes = [GenerationMode.POSITIVE]
    if has_invalid_inputs(schema.raw_schema["paths"][path][method.lower()]):
        modes.append(GenerationMode.NEGATIVE)
    for mode in modes:
        sent = 0

        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Case[Any]) -> None:
            nonlocal sent
            with_key(case, admin_key)
            response = case.call(base_url=live.base_url, session=session, timeout=30)
            sent += 1
            case.validate_response(response, checks=checks)

        try:
            run()
        except Unsatisfiable:
            # The schema accepts anything (no body, or only free strings): there is no invalid input to send.
            assert mode is GenerationMode.NEGATIVE, f"no valid case could be generated for {method} {path}"
        CASES_RUN[f"{mode.value} {method} {path}"] = sent
    assert CASES_RUN[f"positive {method} {path}"] > 0


HUGE_ID = 16682110194080075776  # over 2**63: the database driver cannot even compare it


@pytest.mark.parametrize(
    ("path", "fields", "code", "message"),
    [
        ("/api/v1/enterprise/upload_image", {"base64_image": "iVBORw0K\u00e9\u00e9"}, "not_base64", None),
        ("/api/v1/enterprise/nsfw_image_check", {"init_image": "\u00b7"}, "not_base64", None),
        ("/api/v1/enterprise/fetch", {"request_id": HUGE_ID}, None, "Request not found"),
        ("/api/v1/enterprise/cancel", {"request_id": HUGE_ID}, None, "Request not found"),
        (f"/api/v1/enterprise/fetch/{HUGE_ID}", {}, None, "Request not found"),
        (f"/api/v1/enterprise/cancel/{HUGE_ID}", {}, None, "Request not found"),
    ],
    ids=[
        "non-ascii-base64",
        "non-ascii-nsfw-image",
        "huge-fetch-id",
        "huge-cancel-id",
        "huge-path-id",
        "huge-cancel-path",
    ],
)
def test_inputs_that_once_gave_a_500_now_get_a_clear_error(
    live: LiveServer,
    session: requests.Session,
    path: str,
    fields: dict[str, Any],
    code: str | None,
    message: str | None,
) -> None:
    """Regressions: each of these answered HTTP 500 before the fuzzers found it."""
    reply = session.post(live.url(path), json={"key": live.new_key(Role.USER), **fields}, timeout=30)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["status"] == "error", body
    if code is not None:
        assert body["error_code"] == code, body
    if message is not None:
        assert body["message"] == message, body
