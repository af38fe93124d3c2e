"""`GET /metrics`: Prometheus text from the app's own registry, for admin keys and allow-listed addresses."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sdserver.auth import Role
from sdserver.job_params import FakeParams, ModelLoadParams
from sdserver.jobs import JobKind, JobSpec
from tests.support.live_server import LiveServer


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}, parsed by prometheus-client's own parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def spec(owner: int, kind: JobKind, model_id: str) -> JobSpec:
    return JobSpec(
        owner_key_id=owner,
        kind=kind,
        model_id=model_id,
        params=FakeParams()
        if kind is not JobKind.MODEL_LOAD
        else ModelLoadParams("checkpoint", "url", "http://models.test/m"),
        output_keys=(),
        future_links=(),
        width=64,
        height=64,
        steps=4,
        max_attempts=1,
    )


@pytest.mark.settings(real_status_codes=False)
def test_admin_reads_requests_queue_durations_workers_and_model_loads(
    local_server: LiveServer, user_key: str, http: httpx.Client
) -> None:
    admin = local_server.new_key(Role.ADMIN, "prometheus")
    jobs = local_server.services.jobs
    owner = local_server.services.keys.verify(user_key).id
    done = jobs.submit(spec(owner, JobKind.TEXT2IMG, "test-ok"))
    jobs.submit(spec(owner, JobKind.TEXT2IMG, "test-ok"))  # stays queued
    load = jobs.submit(spec(owner, JobKind.MODEL_LOAD, "my-model"))
    jobs.register_worker("w1", device="cpu", engines=["test"])
    [claimed] = jobs.claim("w1", lease_s=60)
    assert claimed.id == done.id
    jobs.complete(done.id, "w1", result={}, seconds_per_step=0.1)
    jobs.worker_heartbeat("w1", held_models=["test-ok"])
    assert load.kind is JobKind.MODEL_LOAD
    # Requests to count: one refused (user key on an admin endpoint), one fetch by its templated path.
    http.post(local_server.url("/api/v1/enterprise/system_details"), json={"key": user_key})
    http.post(local_server.url(f"/api/v3/fetch/{done.id}"), json={"key": user_key})
    http.get(local_server.url("/no/such/path"))

    response = http.get(local_server.url("/metrics"), headers={"Authorization": f"Bearer {admin}"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    got = samples(response.text)
    fetch = ("method", "POST"), ("route", "/api/v3/fetch/{job_id}"), ("status", "200")
    assert got[("sdserver_http_requests_total", fetch)] == 1
    refused = ("method", "POST"), ("route", "/api/v1/enterprise/system_details"), ("status", "200")
    assert got[("sdserver_http_requests_total", refused)] == 1
    assert got[("sdserver_http_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 1
    assert got[("sdserver_queue_jobs", (("status", "queued"),))] == 2  # the second text2img and the model load
    assert got[("sdserver_queue_jobs", (("status", "running"),))] == 0
    duration = ("kind", "text2img"), ("model", "test-ok")
    assert got[("sdserver_job_duration_seconds_count", duration)] == 1
    assert got[("sdserver_job_duration_seconds_sum", duration)] >= 0
    assert got[("sdserver_workers", ())] == 1
    assert got[("sdserver_models_loaded", (("model", "test-ok"),))] == 1
    assert got[("sdserver_model_loads", (("status", "queued"),))] == 1
    assert got[("sdserver_jobs", (("kind", "text2img"), ("status", "succeeded")))] == 1


@pytest.mark.parametrize(("role", "status"), [(None, 401), (Role.USER, 403)], ids=["no-key", "user-key"])
def test_without_an_admin_key_metrics_are_refused_with_real_codes(
    local_server: LiveServer, http: httpx.Client, role: Role | None, status: int
) -> None:
    params = {"key": local_server.new_key(role)} if role else {}
    response = http.get(local_server.url("/metrics"), params=params)
    assert response.status_code == status
    assert response.json()["status"] == "error"
    assert "sdserver_" not in response.text


@pytest.mark.settings(metrics_allowlist=["127.0.0.0/8"])
def test_an_allow_listed_address_needs_no_key(local_server: LiveServer, http: httpx.Client) -> None:
    response = http.get(local_server.url("/metrics"))
    assert response.status_code == 200
    assert ("sdserver_workers", ()) in samples(response.text)


@pytest.mark.settings(metrics_allowlist=["10.0.0.0/8", "not-an-address"])
def test_an_address_outside_the_allowlist_still_needs_a_key(local_server: LiveServer, http: httpx.Client) -> None:
    assert http.get(local_server.url("/metrics")).status_code == 401


def test_each_app_has_its_own_registry(local_server: LiveServer, http: httpx.Client) -> None:
    from prometheus_client import REGISTRY

    admin = local_server.new_key(Role.ADMIN)
    assert http.get(local_server.url("/metrics"), params={"key": admin}).status_code == 200
    assert REGISTRY.get_sample_value("sdserver_http_requests_total", {"method": "GET"}) is None
