"""S3 going away under uploads and under a worker's output write: clear errors or retries, never a false success."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
from botocore.exceptions import ClientError

from sdserver.auth import Role
from sdserver.config import Settings
from sdserver.engines.fake import FakeEngine
from sdserver.errors import StorageError
from sdserver.objects.base import make_object_key
from sdserver.objects.s3 import S3ObjectStore
from tests.api.conftest import s3_overrides
from tests.support.image_files import png_bytes
from tests.support.live_server import LiveServer, make_settings, run_server, worker_thread
from tests.support.s3_server import S3Server
from tests.support.tcp_proxy import Mode, TcpProxy

TEXT2IMG = "/api/v1/enterprise/text2img"
# (path, image field, where the reply puts the URL)
MODELSLAB_UPLOADS = [
    ("/api/v1/enterprise/upload_image", "base64_image", "image_url"),
    ("/api/v3/base64_crop", "image", "link"),
    ("/api/v6/base64_to_url", "base64_string", "output"),
    ("/api/v6/image_editing/base64_to_url", "init_image", "output"),
]
STABLECOG_UPLOAD = "/v1/image/upload"
# botocore's standard mode makes 3 attempts with up to 1 s + 2 s of jittered backoff between them.
REFUSED_REPLY_BOUND_S = 8.0
# botocore's PUTs send "Expect: 100-continue" and wait this long for it before sending the body anyway.
EXPECT_CONTINUE_WAIT_S = 1.0
JOB_SETTINGS: dict[str, Any] = {"engines": ["test"], "sync_wait_s": 3.0, "job_lease_s": 3.0, "worker_poll_s": 0.05}


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[TcpProxy]:
    """A proxy in front of the shared SeaweedFS: the outage is the proxy's, the real server stays up."""
    target = urlsplit(s3_server.endpoint_url)
    with TcpProxy(target.hostname or "127.0.0.1", target.port or 80) as running:
        yield running


def proxied_settings(tmp_path: Path, s3: S3Server, proxy: TcpProxy, **extra: Any) -> Settings:
    overrides = {**s3_overrides(s3), "s3_endpoint_url": proxy.url, "real_status_codes": True, **extra}
    return make_settings(tmp_path, **overrides)


def object_exists(s3: S3Server, bucket: str, key: str) -> bool:
    """Asked of the real server directly, past the proxy."""
    try:
        s3.client().head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return False
        raise
    return True


def url_in(reply: dict[str, Any], field: str) -> str:
    value = reply[field]
    return str(value[0]) if isinstance(value, list) else str(value)


def upload(http: httpx.Client, live: LiveServer, key: str, path: str, field: str) -> tuple[httpx.Response, float]:
    body = {"key": key, field: base64.b64encode(png_bytes(40, 30)).decode(), "image_type": "png"}
    started = time.monotonic()
    response = http.post(live.url(path), json=body)
    return response, time.monotonic() - started


def test_uploads_answer_503_storage_unavailable_during_an_outage_and_work_again_after(
    tmp_path: Path, s3_server: S3Server, proxy: TcpProxy
) -> None:
    settings = proxied_settings(tmp_path, s3_server, proxy)
    with run_server(settings) as live, httpx.Client(timeout=60, trust_env=False) as http:
        key = live.new_key(Role.USER)
        before, _ = upload(http, live, key, *MODELSLAB_UPLOADS[0][:2])
        assert before.status_code == 200 and before.json()["status"] == "success", before.text

        proxy.outage()
        latencies: dict[str, float] = {}
        for path, field, _ in MODELSLAB_UPLOADS:
            response, latencies[path] = upload(http, live, key, path, field)
            assert response.status_code == 503, (path, response.text)
            reply = response.json()
            assert reply["status"] == "error" and reply["error_code"] == "storage_unavailable", (path, reply)
            assert "S3 could not write" in reply["message"] and reply["messege"] == reply["message"]
            assert not any(name in reply for name in ("image_url", "link", "output")), reply
        started = time.monotonic()
        files = {"file": ("a.png", png_bytes(40, 30), "image/png")}
        stablecog = http.post(live.url(STABLECOG_UPLOAD), files=files, headers={"Authorization": f"Bearer {key}"})
        latencies[STABLECOG_UPLOAD] = time.monotonic() - started
        assert stablecog.status_code == 503, stablecog.text
        assert stablecog.json()["error"] == "storage_unavailable"
        print("upload latency during the outage (s):", {p: round(s, 2) for p, s in latencies.items()})
        assert max(latencies.values()) < REFUSED_REPLY_BOUND_S, latencies

        proxy.set_mode(Mode.FORWARD)
        for path, field, url_field in MODELSLAB_UPLOADS:
            response, _ = upload(http, live, key, path, field)
            assert response.status_code == 200 and response.json()["status"] == "success", (path, response.text)
            stored_key = live.services.objects.key_from_url(url_in(response.json(), url_field))
            assert stored_key is not None and object_exists(s3_server, settings.s3_bucket or "", stored_key)
            assert http.get(url_in(response.json(), url_field)).status_code == 200


def test_a_hanging_s3_becomes_a_storage_error_within_the_client_timeouts(
    tmp_path: Path, s3_server: S3Server, proxy: TcpProxy
) -> None:
    settings = proxied_settings(tmp_path, s3_server, proxy)
    store = S3ObjectStore.from_settings(settings, connect_timeout_s=1.0, read_timeout_s=0.5, max_attempts=2)
    proxy.hang()
    started = time.monotonic()
    with pytest.raises(StorageError, match="S3 could not write"):
        store.put(make_object_key("uploads", "png", temp=False), png_bytes(8, 8), "image/png")
    elapsed = time.monotonic() - started
    assert len(proxy.held_heads) == 2  # both attempts reached the hanging server
    # Per attempt: up to 1 s waiting for "100 Continue" (botocore then sends the body anyway) and the read
    # timeout; at most 1 s of backoff between the two; 1 s of slack for a busy machine.
    assert elapsed < 2 * (EXPECT_CONTINUE_WAIT_S + 0.5) + 1.0 + 1.0, elapsed


def test_default_client_limits_keep_a_dead_s3_from_holding_a_request_for_a_minute(
    tmp_path: Path, s3_server: S3Server, proxy: TcpProxy
) -> None:
    store = S3ObjectStore.from_settings(proxied_settings(tmp_path, s3_server, proxy))
    config = store._client.meta.config  # the limits a serving store really runs with
    attempts = int(config.retries["total_max_attempts"])
    assert attempts >= 2  # a dropped keep-alive connection still gets a second try
    # Standard-mode backoff before attempt n is at most 2**(n-1) s (capped at 20 s).
    backoff = sum(min(2.0 ** (n - 1), 20.0) for n in range(1, attempts))
    per_attempt = float(config.connect_timeout) + EXPECT_CONTINUE_WAIT_S + float(config.read_timeout)
    worst = attempts * per_attempt + backoff
    print(f"worst case for a hanging S3 with the default limits: {worst:.0f} s")
    assert worst < 60.0, (config.connect_timeout, config.read_timeout, attempts)


# --- a worker's output write


def fetch(http: httpx.Client, live: LiveServer, key: str, job_id: int) -> dict[str, Any]:
    reply: dict[str, Any] = http.post(live.url(f"/api/v1/enterprise/fetch/{job_id}"), json={"key": key}).json()
    return reply


class Watcher:
    """Polls fetch and checks on every reply that a `success` points only at objects that really exist."""

    def __init__(self, http: httpx.Client, live: LiveServer, key: str, s3: S3Server, bucket: str) -> None:
        self.http, self.live, self.key, self.s3, self.bucket = http, live, key, s3, bucket
        self.successes_checked = 0

    def check(self, job_id: int) -> dict[str, Any]:
        reply = fetch(self.http, self.live, self.key, job_id)
        if reply["status"] == "success":
            keys = self.live.services.jobs.get(job_id, owner_key_id=None).output_keys
            missing = [k for k in keys if not object_exists(self.s3, self.bucket, k)]
            assert not missing, f"job {job_id} said success but {missing} are not in S3: {reply}"
            self.successes_checked += 1
        return reply

    def until_settled(self, job_id: int, timeout_s: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            reply = self.check(job_id)
            if reply["status"] not in ("processing", "queued"):
                return reply
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not settle: {reply}")

    def until_held_put(self, proxy: TcpProxy, job_id: int) -> None:
        """Wait (fetching all the while) until the worker's first output PUT hangs on the proxy."""
        first_key = self.live.services.jobs.get(job_id, owner_key_id=None).output_keys[0]
        needle = f"PUT /{self.bucket}/{quote(first_key)}".encode()
        deadline = time.monotonic() + 15
        while not any(needle in head for head in proxy.held_heads):
            assert time.monotonic() < deadline, f"no {needle!r} reached the proxy: {proxy.held_heads}"
            assert self.check(job_id)["status"] == "processing"
            time.sleep(0.02)


def submit(http: httpx.Client, live: LiveServer, key: str, **fields: Any) -> dict[str, Any]:
    body = {"key": key, "prompt": "a lighthouse", "model_id": "test-ok", "width": 64, "height": 64, **fields}
    reply: dict[str, Any] = http.post(live.url(TEXT2IMG), json=body).json()
    return reply


@pytest.fixture
def job_site(tmp_path: Path, s3_server: S3Server, proxy: TcpProxy) -> Iterator[tuple[LiveServer, Watcher]]:
    settings = proxied_settings(tmp_path, s3_server, proxy, **JOB_SETTINGS)
    with (
        run_server(settings) as live,
        worker_thread(live, [FakeEngine()], "s3-outage-worker"),
        httpx.Client(timeout=30, trust_env=False) as http,
    ):
        yield live, Watcher(http, live, live.new_key(Role.USER), s3_server, settings.s3_bucket or "")


def test_s3_lost_during_the_output_write_fails_the_job_clearly_then_jobs_work_again(
    job_site: tuple[LiveServer, Watcher], proxy: TcpProxy
) -> None:
    live, watch = job_site
    proxy.hang()
    job_id = submit(watch.http, live, watch.key, samples=2, instant_response="yes")["id"]
    watch.until_held_put(proxy, job_id)
    proxy.outage()  # the PUT in flight is reset and its retries are refused
    started = time.monotonic()
    reply = watch.until_settled(job_id)
    print(f"output write lost: job settled {time.monotonic() - started:.2f} s after the outage began")
    assert reply["status"] == "failed", reply
    assert reply["error_code"] == "storage_unavailable", reply
    assert "could not be stored" in reply["message"] and "S3 could not write" in reply["message"]
    assert reply["output"] == ""
    job = live.services.jobs.get(job_id, owner_key_id=None)
    assert not any(object_exists(watch.s3, watch.bucket, k) for k in job.output_keys)

    proxy.set_mode(Mode.FORWARD)
    after = submit(watch.http, live, watch.key, samples=2)
    assert after["status"] == "success", after
    assert watch.check(after["id"])["status"] == "success"
    assert all(watch.http.get(url).content.startswith(b"\x89PNG") for url in after["output"])


def test_a_blip_during_the_output_write_is_retried_and_success_means_the_objects_exist(
    job_site: tuple[LiveServer, Watcher], proxy: TcpProxy
) -> None:
    live, watch = job_site
    proxy.hang()
    job_id = submit(watch.http, live, watch.key, samples=2, instant_response="yes")["id"]
    watch.until_held_put(proxy, job_id)
    proxy.set_mode(Mode.FORWARD)
    assert proxy.cut() >= 1  # the held PUT is reset; botocore's retry goes through
    reply = watch.until_settled(job_id)
    assert reply["status"] == "success", reply
    assert watch.successes_checked >= 1
    assert len(reply["output"]) == 2
    assert all(watch.http.get(url).content.startswith(b"\x89PNG") for url in reply["output"])
