"""`update_s3` against a real SeaweedFS server and a real worker process: switch from local to S3 while running."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from sdserver.api.services import Services
from sdserver.auth import Role
from sdserver.objects.s3 import S3ObjectStore
from sdserver.worker.supervisor import WorkerSupervisor
from tests.support.image_files import png_bytes
from tests.support.live_server import LiveServer, free_port, make_settings, run_server
from tests.support.s3_server import S3Server

UPDATE_S3 = "/api/v1/enterprise/update_s3"
UPLOAD = "/api/v1/enterprise/upload_image"
TEXT2IMG = "/api/v1/enterprise/text2img"


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[LiveServer, WorkerSupervisor]]:
    """A live API on the local store and one real worker process (test engine) sharing its database."""
    settings = make_settings(tmp_path, engines=["test"], sync_wait_s=20.0, worker_poll_s=0.05)
    with run_server(settings) as server:
        supervisor = WorkerSupervisor(settings, 1, log_level="warning", grace_s=5.0)
        supervisor.start()
        try:
            yield server, supervisor
        finally:
            supervisor.stop(timeout=15)


def new_bucket(s3: S3Server) -> str:
    bucket = f"switch-{uuid.uuid4().hex[:10]}"
    s3.client().create_bucket(Bucket=bucket)
    return bucket


def s3_body(s3: S3Server, target: str, **overrides: str) -> dict[str, str]:
    return {
        "endpoint_url": s3.endpoint_url,
        "region_name": s3.region,
        "aws_access_key_id": s3.access_key,
        "aws_secret_access_key": s3.secret_key,
        "image_directory": f"{target}/sd-images",
        **overrides,
    }


def in_bucket(s3: S3Server, bucket: str, key: str) -> bool:
    try:
        s3.client().head_object(Bucket=bucket, Key=f"sd-images/{key}")
    except ClientError:
        return False
    return True


def upload(http: httpx.Client, server: LiveServer, key: str) -> dict[str, Any]:
    body = {"key": key, "base64_image": base64.b64encode(png_bytes(16, 12)).decode()}
    reply: dict[str, Any] = http.post(server.url(UPLOAD), json=body).json()
    assert reply["status"] == "success", reply
    return reply


def generate(http: httpx.Client, server: LiveServer, key: str, seed: int) -> dict[str, Any]:
    body = {"key": key, "prompt": "a lighthouse", "model_id": "test-ok", "width": 64, "height": 64, "seed": seed}
    reply: dict[str, Any] = http.post(server.url(TEXT2IMG), json=body, timeout=60).json()
    assert reply["status"] == "success", reply
    return reply


def wait_for_worker(server: LiveServer) -> None:
    deadline = time.monotonic() + 30
    while not server.services.jobs.live_workers(within_s=60):
        assert time.monotonic() < deadline, "the worker process never registered"
        time.sleep(0.05)


def test_switch_from_local_to_s3_live(
    live: tuple[LiveServer, WorkerSupervisor], s3_server: S3Server, http: httpx.Client
) -> None:
    server, _supervisor = live
    admin, user = server.new_key(Role.ADMIN), server.new_key(Role.USER)
    wait_for_worker(server)
    # Before: everything on the local folder, served under /files/.
    old_upload = upload(http, server, user)
    old_output = generate(http, server, user, seed=1)["output"][0]
    assert "/files/" in old_upload["image_url"] and "/files/" in old_output

    bucket = new_bucket(s3_server)
    response = http.post(server.url(UPDATE_S3), json={"key": admin, **s3_body(s3_server, bucket)})
    reply = response.json()
    assert reply["status"] == "success", reply
    assert reply["storage"]["bucket"] == bucket and reply["storage"]["prefix"] == "sd-images"
    assert s3_server.secret_key not in response.text and s3_server.access_key not in response.text

    # After: uploads land in the bucket, under the prefix.
    new_upload = upload(http, server, user)
    key = new_upload["image_url"].split("/sd-images/")[1].split("?")[0]
    assert in_bucket(s3_server, bucket, key)
    assert http.get(new_upload["image_url"]).content == png_bytes(16, 12)
    # The worker process, started before the switch, writes its outputs to the bucket too.
    output = generate(http, server, user, seed=2)["output"][0]
    output_key = output.split("/sd-images/")[1].split("?")[0]
    deadline = time.monotonic() + 10
    while not in_bucket(s3_server, bucket, output_key):
        assert time.monotonic() < deadline, "the job output never reached the bucket"
        time.sleep(0.1)
    assert http.get(output).content[:8] == b"\x89PNG\r\n\x1a\n"
    # Links handed out before the switch still download from the local folder.
    assert http.get(old_upload["image_url"]).content == png_bytes(16, 12)
    assert http.get(old_output).content[:8] == b"\x89PNG\r\n\x1a\n"
    details = http.post(server.url("/api/v1/enterprise/system_details"), json={"key": admin}).json()
    assert details["storage"] == "s3"
    assert s3_server.secret_key not in str(details)

    # A restarted API keeps the persisted setting over the environment's local default.
    restarted = Services.build(server.services.settings)
    try:
        assert isinstance(restarted.objects.active, S3ObjectStore)
        assert restarted.objects.config == server.services.objects.config
    finally:
        restarted.jobs.close()
        restarted.engine.dispose()


def test_bad_credentials_are_refused_and_the_old_store_stays_active(
    live: tuple[LiveServer, WorkerSupervisor], s3_server: S3Server, http: httpx.Client
) -> None:
    server, _supervisor = live
    admin, user = server.new_key(Role.ADMIN), server.new_key(Role.USER)
    bucket = new_bucket(s3_server)
    wrong = "wrong-secret-" + uuid.uuid4().hex
    response = http.post(
        server.url(UPDATE_S3), json={"key": admin, **s3_body(s3_server, bucket, aws_secret_access_key=wrong)}
    )
    reply = response.json()
    assert reply["status"] == "error" and reply["error_code"] == "storage_unavailable"
    assert "nothing was changed" in reply["message"]
    assert wrong not in response.text and s3_server.access_key not in response.text
    assert server.services.control.load_storage() is None
    assert "/files/" in upload(http, server, user)["image_url"]

    # An endpoint where no S3 server listens is refused the same way, within the probe's short timeouts.
    started = time.monotonic()
    body = s3_body(s3_server, bucket, endpoint_url=f"http://127.0.0.1:{free_port()}")
    response = http.post(server.url(UPDATE_S3), json={"key": admin, **body})
    assert response.json()["status"] == "error" and time.monotonic() - started < 15
    assert s3_server.secret_key not in response.text
    assert "/files/" in upload(http, server, user)["image_url"]


def test_a_second_switch_keeps_the_first_buckets_objects_readable(
    live: tuple[LiveServer, WorkerSupervisor], s3_server: S3Server, http: httpx.Client
) -> None:
    server, _supervisor = live
    admin, user = server.new_key(Role.ADMIN), server.new_key(Role.USER)
    first, second = new_bucket(s3_server), new_bucket(s3_server)
    switched = http.post(server.url(UPDATE_S3), json={"key": admin, **s3_body(s3_server, first)}).json()
    assert switched["status"] == "success"
    early = upload(http, server, user)
    body = {"key": admin, **s3_body(s3_server, second, image_directory="sd-images", bucket=second)}
    assert http.post(server.url(UPDATE_S3), json=body).json()["status"] == "success"
    late = upload(http, server, user)
    early_key = early["image_url"].split("/sd-images/")[1].split("?")[0]
    late_key = late["image_url"].split("/sd-images/")[1].split("?")[0]
    assert in_bucket(s3_server, first, early_key) and not in_bucket(s3_server, second, early_key)
    assert in_bucket(s3_server, second, late_key)
    # The store reads through to the earlier bucket (base64 replies, engines reading inputs).
    assert server.services.objects.get(early_key) == png_bytes(16, 12)


def test_another_api_replica_follows_the_switch(tmp_path: Path, s3_server: S3Server, http: httpx.Client) -> None:
    with (
        run_server(make_settings(tmp_path)) as first,
        run_server(make_settings(tmp_path)) as second,  # same database and folder, another port
    ):
        admin, user = first.new_key(Role.ADMIN), first.new_key(Role.USER)
        bucket = new_bucket(s3_server)
        switched = http.post(first.url(UPDATE_S3), json={"key": admin, **s3_body(s3_server, bucket)}).json()
        assert switched["status"] == "success"
        deadline = time.monotonic() + 10
        while second.services.objects.config is None:
            assert time.monotonic() < deadline, "the second replica never switched"
            time.sleep(0.1)
        reply = upload(http, second, user)
        assert in_bucket(s3_server, bucket, reply["image_url"].split("/sd-images/")[1].split("?")[0])
