"""Access control over the whole route table: admin endpoints refuse user keys, jobs stay with their key.

ADMIN_ENDPOINTS is the contract's admin list (section 1), kept here by hand: the walk proves every route that
ends in one of these names refuses a user key, and that no other route does, so a new admin route that is
missing from the table (or a user route that turned admin-only) fails this test.
"""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa
from fastapi.routing import APIRoute

from sdserver.api.app import ROUTERS
from sdserver.auth import Role, hash_key
from sdserver.database import api_keys
from sdserver.jobs import JobStatus
from tests.support.live_server import LiveServer

ADMIN_ENDPOINTS = frozenset(
    {
        "load_model",
        "load_model_v2",
        "load_vae",
        "delete_model",
        "sync_models",
        "system_details",
        "clear_cache",
        "restart_server",
        "update_server",
        "update",
        "update_s3",
        "metrics",
    }
)
PUBLIC_PREFIXES = ("/healthz", "/files/", "/docs", "/redoc", "/openapi.json")
FORBIDDEN_MESSAGE = "This endpoint needs an admin key"
TEXT2IMG = "/api/v1/enterprise/text2img"
JOB_ROUTE_NAMES = ("fetch", "cancel", "{job_id}")


def _routes() -> list[tuple[str, str]]:
    pairs = []
    for router in ROUTERS:
        for route in router.routes:
            assert isinstance(route, APIRoute)
            if not route.path.startswith(PUBLIC_PREFIXES):
                pairs.extend((method, route.path) for method in sorted((route.methods or set()) - {"HEAD"}))
    return pairs


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _call(http: httpx.Client, live: LiveServer, method: str, path: str, key: str) -> httpx.Response:
    url = live.url(path.replace("{job_id}", "1"))
    if method == "GET":
        return http.get(url, headers={"key": key})
    return http.request(method, url, json={"key": key}, headers={"key": key})


@pytest.mark.settings(real_status_codes=True)
def test_user_keys_are_refused_on_every_admin_route_and_only_there(
    local_server: LiveServer, http: httpx.Client
) -> None:
    user = local_server.new_key(Role.USER, "app user")
    admin_routes: list[tuple[str, str]] = []
    for method, path in _routes():
        reply = _call(http, local_server, method, path, user)
        refused = reply.status_code == 403
        if _name(path) in ADMIN_ENDPOINTS:
            admin_routes.append((method, path))
            assert refused, (method, path, reply.status_code, reply.text[:200])
            assert reply.json()["status"] == "error", (method, path)
            assert reply.json()["message"] == FORBIDDEN_MESSAGE, (method, path, reply.text[:200])
        else:
            assert not refused, f"{method} {path} refuses user keys but is not in ADMIN_ENDPOINTS"
    found = {_name(path) for _, path in admin_routes}
    assert found == ADMIN_ENDPOINTS, f"admin endpoints without a route: {sorted(ADMIN_ENDPOINTS - found)}"
    print(f"\nuser key refused on {len(admin_routes)} admin routes ({len(found)} endpoints, every alias)")


def test_user_key_refusal_is_an_error_envelope_without_real_codes(local_server: LiveServer, http: httpx.Client) -> None:
    user = local_server.new_key(Role.USER, "app user")
    reply = http.post(local_server.url("/api/v1/enterprise/clear_cache"), json={"key": user})
    assert reply.status_code == 200
    assert reply.json()["status"] == "error" and reply.json()["message"] == FORBIDDEN_MESSAGE
    admin = local_server.new_key(Role.ADMIN, "ops")
    assert http.post(local_server.url("/api/v1/enterprise/clear_cache"), json={"key": admin}).json()["status"] in (
        "success",
        "ok",
    )


@pytest.mark.settings(engines=["test"], sync_wait_s=0)
def test_another_key_cannot_fetch_or_cancel_a_job_under_any_alias(local_server: LiveServer, http: httpx.Client) -> None:
    owner = local_server.new_key(Role.USER, "owner")
    other = local_server.new_key(Role.USER, "other")
    body = {"key": owner, "prompt": "a lighthouse", "model_id": "test-ok", "width": 64, "height": 64}
    job_id = http.post(local_server.url(TEXT2IMG), json=body).json()["id"]
    job_routes = [path for method, path in _routes() if method == "POST" and _name(path) in JOB_ROUTE_NAMES]
    tried = 0
    for path in job_routes:
        url = local_server.url(path.replace("{job_id}", str(job_id)))
        reply = http.post(url, json={"key": other, "request_id": job_id}).json()
        assert reply["status"] == "error" and reply["message"] == "Request not found", (path, reply)
        assert "output" not in reply and "future_links" not in reply, (path, reply)
        tried += 1
    cleared = http.post(local_server.url("/api/v1/enterprise/clear_queue"), json={"key": other}).json()
    assert cleared["status"] == "success", cleared
    assert local_server.services.jobs.get(job_id, owner_key_id=None).status is JobStatus.QUEUED
    mine = http.post(local_server.url(f"/api/v1/enterprise/fetch/{job_id}"), json={"key": owner}).json()
    assert mine["status"] == "processing" and mine["id"] == job_id
    print(f"\nforeign key refused on {tried} fetch/cancel routes")
    assert tried >= 10


def test_keys_are_stored_hashed_in_the_database_row(local_server: LiveServer) -> None:
    key, secret = local_server.services.keys.create("row check", Role.USER)
    with local_server.services.engine.connect() as conn:
        row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key.id)).mappings().one()
    values = [str(value) for value in row.values()]
    assert row["key_hash"] == hash_key(secret) and len(row["key_hash"]) == 64
    assert not any(secret in value for value in values), "the plaintext key is in the row"
    assert row["key_prefix"] == secret[:8]
