"""The job spine through HTTP: submit, sync-then-processing replies, fetch in both forms, cancel, fair use."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdserver.api.aliases import PREFIXES
from sdserver.auth import Role
from sdserver.engines.fake import FakeEngine
from tests.support.live_server import LiveServer, make_settings, run_server, worker_thread

TEXT2IMG = "/api/v1/enterprise/text2img"

SPINE_SETTINGS: dict[str, Any] = {
    "engines": ["test"],
    "sync_wait_s": 3.0,
    "job_lease_s": 3.0,
    "worker_poll_s": 0.05,
}


@pytest.fixture
def spine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    """A live API plus one in-process worker thread running the deterministic test engine."""
    marker = request.node.get_closest_marker("settings")
    overrides = {**SPINE_SETTINGS, **(marker.kwargs if marker else {})}
    with_worker = overrides.pop("with_worker", True)
    with run_server(make_settings(tmp_path, **overrides)) as live, contextlib.ExitStack() as stack:
        if with_worker:
            stack.enter_context(worker_thread(live, [FakeEngine()], "test-worker"))
        yield live


@pytest.fixture
def key(spine: LiveServer) -> str:
    return spine.new_key(Role.USER)


def submit(http: httpx.Client, live: LiveServer, key: str, **fields: Any) -> dict[str, Any]:
    body = {"key": key, "prompt": "a lighthouse", "model_id": "test-ok", "width": 64, "height": 64, **fields}
    reply: dict[str, Any] = http.post(live.url(TEXT2IMG), json=body).json()
    return reply


def fetch(http: httpx.Client, live: LiveServer, key: str, job_id: int) -> dict[str, Any]:
    reply: dict[str, Any] = http.post(live.url(f"/api/v1/enterprise/fetch/{job_id}"), json={"key": key}).json()
    return reply


def poll_until(http: httpx.Client, live: LiveServer, key: str, job_id: int, status: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = fetch(http, live, key, job_id)
        if reply["status"] == status:
            return reply
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {status}: {reply}")


def test_a_fast_job_answers_success_synchronously(spine: LiveServer, key: str, http: httpx.Client) -> None:
    reply = submit(http, spine, key, samples=2, seed=1234, track_id=77)
    assert reply["status"] == "success", reply
    assert isinstance(reply["id"], int)
    assert reply["meta"]["id"] == str(reply["id"])
    assert reply["meta"]["seed"] == 1234
    assert reply["meta"]["W"] == 64 and reply["meta"]["n_samples"] == 2
    assert len(reply["output"]) == 2 and reply["output"] == reply["future_links"]
    images = [http.get(url) for url in reply["output"]]
    assert all(image.status_code == 200 and image.content.startswith(b"\x89PNG") for image in images)
    assert isinstance(reply["generationTime"], float)


def test_same_seed_and_params_give_identical_bytes(spine: LiveServer, key: str, http: httpx.Client) -> None:
    first = submit(http, spine, key, seed=5)
    second = submit(http, spine, key, seed=5)
    other = submit(http, spine, key, seed=6)
    download = [http.get(reply["output"][0]).content for reply in (first, second, other)]
    assert download[0] == download[1] != download[2]


def test_no_seed_gets_a_random_one_reported_in_meta(spine: LiveServer, key: str, http: httpx.Client) -> None:
    seeds = {submit(http, spine, key)["meta"]["seed"] for _ in range(3)}
    assert len(seeds) == 3 and all(isinstance(seed, int) for seed in seeds)


@pytest.mark.settings(sync_wait_s=0.3)
def test_a_slow_job_answers_processing_then_fetch_gives_success(
    spine: LiveServer, key: str, http: httpx.Client
) -> None:
    reply = submit(http, spine, key, model_id="test-slow", num_inference_steps=10)
    assert reply["status"] == "processing", reply
    assert isinstance(reply["eta"], int) and reply["eta"] >= 0
    assert reply["messege"] == reply["message"]
    assert reply["fetch_result"] == spine.url(f"/api/v1/enterprise/fetch/{reply['id']}")
    assert reply["output"] == [] and len(reply["future_links"]) == 1
    # future_links are final before the job ends: nothing there yet, the image appears at that exact URL.
    assert http.get(reply["future_links"][0]).status_code == 404
    done = poll_until(http, spine, key, reply["id"], "success")
    assert done["output"] == reply["future_links"]
    assert http.get(reply["future_links"][0]).status_code == 200


def test_instant_response_never_waits(spine: LiveServer, key: str, http: httpx.Client) -> None:
    reply = submit(http, spine, key, instant_response="yes")
    assert reply["status"] == "processing"
    assert poll_until(http, spine, key, reply["id"], "success")["id"] == reply["id"]


def test_a_failing_job_answers_failed_with_a_reason(spine: LiveServer, key: str, http: httpx.Client) -> None:
    reply = submit(http, spine, key, model_id="test-raise")
    assert reply["status"] == "failed", reply
    assert reply["message"] and reply["output"] == ""
    assert reply["error_code"] == "engine_error"
    assert "future_links" not in reply  # links to images that will never exist would mislead clients


@pytest.mark.settings(with_worker=False)
def test_fetch_in_both_forms_under_every_prefix(spine: LiveServer, key: str, http: httpx.Client) -> None:
    job_id = submit(http, spine, key, instant_response=True)["id"]
    for prefix in PREFIXES:
        by_path = http.post(spine.url(f"{prefix}/fetch/{job_id}"), json={"key": key}).json()
        by_body = http.post(spine.url(f"{prefix}/fetch"), json={"key": key, "request_id": str(job_id)}).json()
        by_number = http.post(spine.url(f"{prefix}/fetch"), json={"key": key, "request_id": job_id}).json()
        for reply in (by_path, by_body, by_number):
            assert reply["status"] == "processing", (prefix, reply)
            assert reply["id"] == job_id
            assert reply["queue_position"] == 1
            assert reply["progress"] == 0.0


@pytest.mark.settings(with_worker=False)
def test_fetch_result_uses_the_prefix_family_of_the_request(spine: LiveServer, key: str, http: httpx.Client) -> None:
    body = {"key": key, "prompt": "x", "model_id": "test-ok", "instant_response": "yes"}
    reply = http.post(spine.url("/api/v6/images/text2img"), json=body).json()
    assert reply["fetch_result"] == spine.url(f"/api/v6/images/fetch/{reply['id']}")
    assert http.post(reply["fetch_result"], json={"key": key}).json()["id"] == reply["id"]


@pytest.mark.settings(with_worker=False)
def test_unknown_and_foreign_ids_are_not_found(spine: LiveServer, key: str, http: httpx.Client) -> None:
    job_id = submit(http, spine, key, instant_response=True)["id"]
    other = spine.new_key(Role.USER, "someone else")
    for who, path in [
        (key, "/api/v1/enterprise/fetch/999999"),
        (other, f"/api/v1/enterprise/fetch/{job_id}"),
        (key, "/api/v1/enterprise/fetch/not-a-number"),
    ]:
        reply = http.post(spine.url(path), json={"key": who}).json()
        assert reply == {**reply, "status": "error", "message": "Request not found"}
    cancel = http.post(spine.url(f"/api/v1/enterprise/cancel/{job_id}"), json={"key": other}).json()
    assert cancel["message"] == "Request not found"
    admin = spine.new_key(Role.ADMIN, "ops")
    assert http.post(spine.url(f"/api/v1/enterprise/fetch/{job_id}"), json={"key": admin}).json()["id"] == job_id


@pytest.mark.settings(with_worker=False)
def test_cancel_a_queued_job(spine: LiveServer, key: str, http: httpx.Client) -> None:
    job_id = submit(http, spine, key, instant_response=True)["id"]
    reply = http.post(spine.url("/api/v1/enterprise/cancel"), json={"key": key, "request_id": job_id}).json()
    assert reply["status"] == "success" and reply["job_status"] == "cancelled"
    fetched = fetch(http, spine, key, job_id)
    assert fetched["status"] == "failed" and fetched["message"] == "The request was cancelled"


@pytest.mark.settings(sync_wait_s=0.2)
def test_cancel_a_running_job_stops_it_at_the_next_step(spine: LiveServer, key: str, http: httpx.Client) -> None:
    job_id = submit(http, spine, key, model_id="test-slow", num_inference_steps=50)["id"]
    deadline = time.monotonic() + 10
    while fetch(http, spine, key, job_id).get("progress", 0) <= 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    reply = http.post(spine.url(f"/api/v1/enterprise/cancel/{job_id}"), json={"key": key}).json()
    assert reply["status"] == "success"
    assert poll_until(http, spine, key, job_id, "failed", timeout=10)["error_code"] == "cancelled"
    job = spine.services.jobs.get(job_id, owner_key_id=None)
    assert job.progress_step < 50
    assert not any(spine.services.objects.exists(k) for k in job.output_keys)


@pytest.mark.settings(with_worker=False, max_active_jobs_per_key=2)
def test_fair_use_cap_answers_rate_limit_exceeded(spine: LiveServer, key: str, http: httpx.Client) -> None:
    assert submit(http, spine, key, instant_response=True)["status"] == "processing"
    assert submit(http, spine, key, instant_response=True)["status"] == "processing"
    refused = submit(http, spine, key, instant_response=True)
    assert refused["status"] == "error"
    assert refused["message"].startswith("Rate limit exceeded")
    assert refused["retry_after"] > 0
    # Another key is not affected.
    assert submit(http, spine, spine.new_key(), instant_response=True)["status"] == "processing"


@pytest.mark.settings(with_worker=False, max_active_jobs_per_key=1, real_status_codes=True)
def test_fair_use_cap_is_429_with_real_status_codes(spine: LiveServer, key: str, http: httpx.Client) -> None:
    submit(http, spine, key, instant_response=True)
    response = http.post(
        spine.url(TEXT2IMG), json={"key": key, "prompt": "x", "model_id": "test-ok", "instant_response": True}
    )
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) > 0


@pytest.mark.settings(with_worker=False)
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"model_id": "no-such-model"}, "Model id not found"),
        ({"width": "abc"}, "width: must be a number, got 'abc'"),
        ({"width": 2048}, "width: must be at most 1024, got 2048"),
        ({"samples": 5}, "samples: must be at most 4, got 5"),
        ({"prompt": ""}, "prompt: is required, got ''"),
        ({"webhook": "ftp://example.com/hook"}, "webhook: must be an http(s) URL, got 'ftp://example.com/hook'"),
    ],
    ids=["unknown-model", "not-a-number", "too-wide", "too-many-samples", "no-prompt", "bad-webhook"],
)
def test_bad_generation_requests_get_clear_errors(
    spine: LiveServer, key: str, http: httpx.Client, fields: dict[str, Any], message: str
) -> None:
    reply = submit(http, spine, key, **fields)
    assert reply["status"] == "error"
    assert reply["message"] == message


@pytest.mark.settings(with_worker=False)
def test_lenient_values_and_capped_steps(spine: LiveServer, key: str, http: httpx.Client) -> None:
    reply = submit(
        http, spine, key, width="500.0", height="256", samples="2", num_inference_steps=80, instant_response="true"
    )
    assert reply["status"] == "processing"
    assert reply["meta"]["W"] == 496 and reply["meta"]["H"] == 256
    assert reply["meta"]["steps"] == 50 and reply["meta"]["n_samples"] == 2


@pytest.mark.settings(with_worker=False)
def test_position_moves_as_jobs_ahead_finish(spine: LiveServer, key: str, http: httpx.Client) -> None:
    ids = [submit(http, spine, key, instant_response=True)["id"] for _ in range(3)]
    assert [fetch(http, spine, key, i)["queue_position"] for i in ids] == [1, 2, 3]
    http.post(spine.url(f"/api/v1/enterprise/cancel/{ids[0]}"), json={"key": key})
    assert [fetch(http, spine, key, i)["queue_position"] for i in ids[1:]] == [1, 2]


@pytest.mark.settings(fetch_allowlist=["127.0.0.1"], webhook_secret="receiver-shared-secret-123")
def test_the_webhook_arrives_signed_with_track_id(spine: LiveServer, key: str, http: httpx.Client) -> None:
    import json

    from sdserver.webhooks import verify_signature
    from tests.support.http_host import HttpHost, Reply

    with HttpHost({"/hook": Reply(b"ok", "text/plain")}) as receiver:
        reply = submit(http, spine, key, webhook=receiver.url("/hook"), track_id="order-17", seed=3)
        assert reply["status"] == "success"
        deadline = time.monotonic() + 15
        while not receiver.requests_to("/hook") and time.monotonic() < deadline:
            time.sleep(0.05)
        [delivery] = receiver.requests_to("/hook")
    body = json.loads(delivery.body)
    assert body["status"] == "success" and body["id"] == reply["id"] and body["track_id"] == "order-17"
    assert body["output"] == reply["output"]
    headers = delivery.headers
    assert verify_signature(
        b"receiver-shared-secret-123", headers["x-sdserver-timestamp"], delivery.body, headers["x-sdserver-signature"]
    )
    deadline = time.monotonic() + 5
    while fetch(http, spine, key, reply["id"])["webhook_status"] != "delivered" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fetch(http, spine, key, reply["id"])["webhook_status"] == "delivered"


def test_a_webhook_to_a_private_address_is_refused_and_marked_failed(
    spine: LiveServer, key: str, http: httpx.Client
) -> None:
    reply = submit(http, spine, key, webhook="http://10.0.0.1/hook", track_id=5)
    assert reply["status"] == "success"
    deadline = time.monotonic() + 10
    while fetch(http, spine, key, reply["id"])["webhook_status"] != "failed" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fetch(http, spine, key, reply["id"])["webhook_status"] == "failed"
