"""Server management endpoints over real HTTP: success, user keys refused, bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from sdserver import __version__
from sdserver.auth import Role
from sdserver.catalog.layout import DIFFUSERS_DIR, MODEL_INDEX
from sdserver.job_params import FakeParams
from sdserver.jobs import Job, JobKind, JobSpec, JobStatus
from sdserver.jobstore.control import Command
from sdserver.objects.base import make_object_key
from tests.support.live_server import LiveServer

ENTERPRISE = "/api/v1/enterprise"
ADMIN_ONLY = ["system_details", "clear_cache", "restart_server", "update_server", "update", "sync_models", "update_s3"]
ALL = [*ADMIN_ONLY, "schedulers_list", "clear_queue"]


def submit(live: LiveServer, owner_key: str, model_id: str = "test-ok", size: int = 64) -> Job:
    owner = live.services.keys.verify(owner_key)
    spec = JobSpec(
        owner_key_id=owner.id,
        kind=JobKind.TEXT2IMG,
        model_id=model_id,
        params=FakeParams(),
        output_keys=(),
        future_links=(),
        width=size,
        height=size,
        steps=10,
        max_attempts=1,
    )
    return live.services.jobs.submit(spec)


def post(http: httpx.Client, live: LiveServer, name: str, key: str, **body: object) -> httpx.Response:
    return http.post(live.url(f"{ENTERPRISE}/{name}"), json={"key": key, **body})


@pytest.fixture
def admin_key(local_server: LiveServer) -> str:
    return local_server.new_key(Role.ADMIN, "operator")


@pytest.mark.settings(real_status_codes=True)
@pytest.mark.parametrize("name", ADMIN_ONLY)
def test_user_keys_are_refused_on_admin_endpoints(
    local_server: LiveServer, user_key: str, http: httpx.Client, name: str
) -> None:
    response = post(http, local_server, name, user_key)
    assert response.status_code == 403
    assert response.json()["status"] == "error"
    assert response.json()["error_code"] == "forbidden"


def test_refusals_answer_http_200_unless_real_codes_are_on(
    local_server: LiveServer, user_key: str, http: httpx.Client
) -> None:
    response = post(http, local_server, "restart_server", user_key)
    assert response.status_code == 200
    assert response.json()["status"] == "error"
    assert local_server.services.control.versions()[Command.RESTART_WORKERS] == 0  # nothing was done


@pytest.mark.parametrize("name", ALL)
def test_a_body_that_is_not_a_json_object_is_a_validation_error(
    local_server: LiveServer, admin_key: str, http: httpx.Client, name: str
) -> None:
    response = http.post(local_server.url(f"{ENTERPRISE}/{name}"), content=b"[1, 2]", headers={"key": admin_key})
    body = response.json()
    assert body["status"] == "error"
    assert body["errors"] == {"body": ["must be a JSON object, got 'list'"]}


@pytest.mark.parametrize("name", ALL)
def test_a_missing_key_is_the_vendor_error(local_server: LiveServer, http: httpx.Client, name: str) -> None:
    body = http.post(local_server.url(f"{ENTERPRISE}/{name}"), json={}).json()
    assert body["status"] == "error" and body["message"] == "Invalid Api Key"


def test_system_details_reports_queue_workers_models_and_memory(
    local_server: LiveServer, admin_key: str, user_key: str, http: httpx.Client
) -> None:
    jobs = local_server.services.jobs
    first, second = submit(local_server, user_key, size=512), submit(local_server, user_key, size=512)
    jobs.register_worker("gpu-worker-1", device="cuda:0", engines=["diffusers", "upscale"])
    claimed = jobs.claim("gpu-worker-1", held_models=["test-ok"], lease_s=60)
    assert [job.id for job in claimed] == [first.id]
    jobs.worker_heartbeat("gpu-worker-1", held_models=["test-ok"])
    body = post(http, local_server, "system_details", admin_key).json()
    assert body["status"] == "ok"
    assert body["version"] == __version__
    assert body["model_count"] == 1 and body["loaded_models"] == ["test-ok"]
    assert body["queue"] == {"queued": 1, "running": 1} and body["queue_depth"] == 2
    # No measured speed yet: 1 s per 512×512 step, 10 steps queued + 10 running, one live worker holding the model.
    assert body["queue_time"] == 20
    assert body["worker_count"] == 1 and body["devices"] == ["cuda:0"]
    [worker] = body["workers"]
    assert worker["worker_id"] == "gpu-worker-1" and worker["engines"] == ["diffusers", "upscale"]
    assert worker["loaded_models"] == ["test-ok"]
    assert body["memory"]["total_bytes"] > body["memory"]["available_bytes"] > 0
    assert body["storage"] == "local"
    assert second.status is JobStatus.QUEUED
    # A GET with the key in the query works too (read-only endpoint).
    assert (
        http.get(local_server.url(f"{ENTERPRISE}/system_details"), params={"key": admin_key}).json()["status"] == "ok"
    )


@pytest.mark.parametrize(
    "path", [f"{ENTERPRISE}/schedulers_list", "/api/v3/schedulers_list", "/api/v4/dreambooth/schedulers_list"]
)
def test_schedulers_list_is_open_to_user_keys(
    local_server: LiveServer, user_key: str, http: httpx.Client, path: str
) -> None:
    body = http.post(local_server.url(path), json={"key": user_key}).json()
    assert body["status"] == "success"
    assert body["schedulers"][:2] == ["DDPMScheduler", "DDIMScheduler"]
    assert "DPMSolverMultistepScheduler" in body["schedulers"] and "LCMScheduler" in body["schedulers"]
    # Beyond the contract's list, what generation accepts too (A1111's "DPM++ SDE").
    assert body["schedulers"][-1] == "DPMSolverSDEScheduler"
    # Listed by the contract but unable to sample Stable Diffusion: not offered.
    assert not {"KarrasVeScheduler", "ScoreSdeVeScheduler", "DDIMInverseScheduler"} & set(body["schedulers"])


def test_clear_cache_tells_workers_and_purges_expired_temp_files(
    local_server: LiveServer, admin_key: str, http: httpx.Client
) -> None:
    local = local_server.services.local_files
    old = make_object_key("uploads", "png", temp=True, now=datetime.now(UTC) - timedelta(days=3))
    fresh = make_object_key("uploads", "png", temp=True)
    for key in (old, fresh):
        local.put(key, b"png bytes", "image/png")
    body = post(http, local_server, "clear_cache", admin_key).json()
    assert body["status"] == "success" and body["message"] == "Cache cleared successfully"
    assert body["temp_files_removed"] == 1
    assert not local.exists(old) and local.exists(fresh)
    assert local_server.services.control.versions()[Command.CLEAR_CACHE] == 1


def test_clear_queue_cancels_the_callers_queued_jobs_and_an_admin_clears_all(
    local_server: LiveServer, admin_key: str, user_key: str, http: httpx.Client
) -> None:
    other_key = local_server.new_key(Role.USER, "other")
    mine, theirs = submit(local_server, user_key), submit(local_server, other_key)
    body = post(http, local_server, "clear_queue", user_key).json()
    assert body["status"] == "success" and body["cancelled"] == 1 and body["ids"] == [mine.id]
    get = local_server.services.jobs.get
    assert get(mine.id, owner_key_id=None).status is JobStatus.CANCELLED
    assert get(theirs.id, owner_key_id=None).status is JobStatus.QUEUED
    body = post(http, local_server, "clear_queue", admin_key).json()
    assert body["ids"] == [theirs.id]
    assert get(theirs.id, owner_key_id=None).status is JobStatus.CANCELLED
    assert post(http, local_server, "clear_queue", admin_key).json()["cancelled"] == 0


def test_restart_server_issues_a_graceful_restart(local_server: LiveServer, admin_key: str, http: httpx.Client) -> None:
    body = post(http, local_server, "restart_server", admin_key).json()
    assert body["status"] == "success" and "gracefully" in body["message"]
    assert local_server.services.control.versions()[Command.RESTART_WORKERS] == 1


@pytest.mark.parametrize("name", ["update_server", "update"])
def test_update_says_honestly_that_the_operator_updates(
    local_server: LiveServer, admin_key: str, http: httpx.Client, name: str
) -> None:
    body = post(http, local_server, name, admin_key).json()
    assert body["status"] == "success" and body["updated"] is False
    assert body["version"] == __version__ and "operator" in body["message"]


def test_sync_models_lists_the_models_this_server_has(
    local_server: LiveServer, admin_key: str, http: httpx.Client
) -> None:
    folder = local_server.services.settings.data_dir / "models" / DIFFUSERS_DIR / "my-model"
    folder.mkdir(parents=True)
    (folder / MODEL_INDEX).write_text("{}")
    body = post(http, local_server, "sync_models", admin_key, sync_key="vendor-sync-key").json()
    assert body["status"] == "success"
    [entry] = [model for model in body["models"] if model["model_id"] == "my-model"]
    assert entry["model_type"] == "checkpoint" and entry["state"] == "ready"
    datetime.strptime(entry["load_data"], "%m/%d/%Y %H:%M:%S")  # the vendor's format


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"aws_access_key_id": "AKIA0000", "image_directory": "bucket"}, "aws_secret_access_key"),
        ({"aws_access_key_id": "AKIA0000", "aws_secret_access_key": "s3cr3t-value"}, "image_directory"),
        (
            {
                "aws_access_key_id": "AKIA0000",
                "aws_secret_access_key": "s3cr3t-value",
                "image_directory": "b",
                "endpoint_url": "ftp://x",
            },
            "endpoint_url",
        ),
        (
            {"aws_access_key_id": "AKIA0000", "aws_secret_access_key": "s3cr3t-value", "bucket": "a/b"},
            "bucket",
        ),
    ],
    ids=["no-secret", "no-bucket", "bad-endpoint", "slash-in-bucket"],
)
def test_update_s3_bad_input_names_the_field_and_never_echoes_the_secret(
    local_server: LiveServer, admin_key: str, http: httpx.Client, body: dict[str, str], field: str
) -> None:
    response = post(http, local_server, "update_s3", admin_key, **body)
    reply = response.json()
    assert reply["status"] == "error" and field in reply["errors"]
    assert "s3cr3t-value" not in response.text
    assert local_server.services.control.load_storage() is None
