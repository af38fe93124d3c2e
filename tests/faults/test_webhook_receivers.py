"""Bad webhook receivers (hanging, answering 500) never slow the job queue; deliveries retry, then give up."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from sdserver.auth import Role
from sdserver.engines.fake import FakeEngine
from sdserver.jobs import JobStatus, WebhookStatus
from sdserver.jobstore.tables import job_webhooks
from sdserver.webhooks import ATTEMPT_HEADER, JITTER
from tests.support.http_host import HttpHost, RecordedRequest, Reply
from tests.support.live_server import LiveServer, make_settings, run_server, worker_thread

TEXT2IMG = "/api/v1/enterprise/text2img"
# test-slow sleeps 0.2 s a step: 2 steps make each job take a known 0.4 s of worker time.
SLOW_JOB: dict[str, Any] = {"model_id": "test-slow", "num_inference_steps": 2, "instant_response": "yes"}
BASE_SETTINGS: dict[str, Any] = {
    "engines": ["test"],
    "fetch_allowlist": ["127.0.0.1"],  # the receivers live on loopback, which the SSRF guard refuses otherwise
    "job_lease_s": 5.0,
    "worker_poll_s": 0.05,
}
N = 4


@dataclass
class Receiver:
    """Scripted webhook routes that note when each request arrived (wall clock, like the job timestamps)."""

    release: threading.Event = field(default_factory=threading.Event)
    arrivals: list[tuple[float, RecordedRequest]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _note(self, request: RecordedRequest) -> None:
        with self.lock:
            self.arrivals.append((time.time(), request))

    def hang(self, request: RecordedRequest) -> Reply:
        """Accepts and answers nothing until the test ends (the sender's timeout fires first)."""
        self._note(request)
        self.release.wait(60)
        return Reply(b"too late", status=500)

    def fail(self, request: RecordedRequest) -> Reply:
        self._note(request)
        return Reply(b"receiver broken", status=500)

    def ok(self, request: RecordedRequest) -> Reply:
        self._note(request)
        return Reply(b"ok")

    def of_job(self, job_id: int) -> list[tuple[float, RecordedRequest]]:
        with self.lock:
            return [(at, r) for at, r in self.arrivals if r.headers.get("x-sdserver-job-id") == str(job_id)]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, HttpHost]]:
    routes = Receiver()
    with HttpHost({"/hang": routes.hang, "/fail": routes.fail, "/ok": routes.ok}) as host:
        try:
            yield routes, host
        finally:
            routes.release.set()


@pytest.fixture
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[LiveServer, httpx.Client, str]]:
    """The real app (which runs the webhook sender) and one worker thread on the test engine."""
    marker = request.node.get_closest_marker("settings")
    settings = make_settings(tmp_path, **{**BASE_SETTINGS, **(marker.kwargs if marker else {})})
    with (
        run_server(settings) as live,
        worker_thread(live, [FakeEngine()], "webhook-fault-worker"),
        httpx.Client(timeout=30, trust_env=False) as http,
    ):
        yield live, http, live.new_key(Role.USER)


def submit(http: httpx.Client, live: LiveServer, key: str, webhook: str | None = None) -> int:
    body = {"key": key, "prompt": "a lighthouse", "width": 64, "height": 64, **SLOW_JOB}
    if webhook is not None:
        body["webhook"] = webhook
    reply = http.post(live.url(TEXT2IMG), json=body).json()
    assert reply["status"] == "processing", reply
    return int(reply["id"])


def wait_all_succeeded(live: LiveServer, job_ids: list[int], timeout_s: float = 20.0) -> list[datetime]:
    """Wait until every job succeeded; return their finish times as the store recorded them."""
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = [live.services.jobs.get(job_id, owner_key_id=None) for job_id in job_ids]
        assert not [job for job in jobs if job.status in (JobStatus.FAILED, JobStatus.CANCELLED)], jobs
        if all(job.status is JobStatus.SUCCEEDED for job in jobs):
            return [job.finished_at for job in jobs if job.finished_at is not None]
        assert time.monotonic() < deadline, [(job.id, job.status) for job in jobs]
        time.sleep(0.05)


def queue_time(live: LiveServer, http: httpx.Client, key: str, webhooks: list[str | None]) -> tuple[float, list[int]]:
    """Submit one job per entry (its webhook or none), in order; seconds until the last one finished."""
    started = time.time()
    job_ids = [submit(http, live, key, webhook) for webhook in webhooks]
    finished = wait_all_succeeded(live, job_ids)
    return max(at.timestamp() for at in finished) - started, job_ids


def deliveries(live: LiveServer, job_ids: list[int]) -> dict[int, Any]:
    with live.services.engine.connect() as conn:
        rows = conn.execute(sa.select(job_webhooks).where(job_webhooks.c.job_id.in_(job_ids))).all()
    return {row.job_id: row for row in rows}


def wait_webhooks(live: LiveServer, job_ids: list[int], status: WebhookStatus, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        states = [live.services.jobs.get(job_id, owner_key_id=None).webhook_status for job_id in job_ids]
        if all(state is status for state in states):
            return
        assert time.monotonic() < deadline, f"webhooks never all {status}: {states}"
        time.sleep(0.05)


def no_escaped_errors(caplog: pytest.LogCaptureFixture) -> None:
    escaped = [r for r in caplog.records if r.name.startswith("sdserver.webhooks") and r.levelno >= logging.ERROR]
    assert not escaped, [r.getMessage() for r in escaped]


@pytest.mark.settings(webhook_timeout_s=3.0, webhook_max_attempts=2, webhook_backoff_s=0.1)
def test_a_hanging_receiver_never_delays_the_queue_and_is_given_up_after_its_attempts(
    site: tuple[LiveServer, httpx.Client, str],
    receiver: tuple[Receiver, HttpHost],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sdserver.webhooks")
    live, http, key = site
    routes, host = receiver
    baseline, _ = queue_time(live, http, key, [None] * (2 * N))
    # Hanging webhooks first, so their deliveries hang while the plain jobs behind them still run.
    hanging, job_ids = queue_time(live, http, key, [host.url("/hang")] * N + [None] * N)
    hooked = job_ids[:N]
    ratio = hanging / baseline
    print(
        f"queue time for {2 * N} jobs: baseline {baseline:.2f} s, with {N} hanging webhooks {hanging:.2f} s, "
        f"ratio {ratio:.2f}"
    )
    # Had a job waited for its delivery, each hooked job would add the 3 s timeout: a ratio near 4.4.
    assert ratio < 1.5, (baseline, hanging)

    # Structurally: jobs kept finishing while a delivery was hanging (the first one hangs until about 4 s
    # into the phase, and its retry until about 7.5 s), and none was delivered or given up yet.
    finished = [live.services.jobs.get(job_id, owner_key_id=None).finished_at for job_id in job_ids]
    last_finish = max(at.timestamp() for at in finished if at is not None)
    first_arrival = min((at for at, _ in routes.arrivals), default=None)
    assert first_arrival is not None and first_arrival < last_finish, (routes.arrivals, last_finish)
    states = {live.services.jobs.get(job_id, owner_key_id=None).webhook_status for job_id in hooked}
    assert states <= {WebhookStatus.PENDING, WebhookStatus.RETRYING}, states

    # Each hanging delivery times out, is retried once, and is given up and recorded.
    wait_webhooks(live, hooked, WebhookStatus.FAILED, timeout_s=20)
    for job_id, row in deliveries(live, hooked).items():
        assert row.attempts == 2 and row.gave_up_at is not None and row.next_attempt_at is None, row
        assert row.last_status_code is None and "timed out" in row.last_error, row
        assert [r.headers[ATTEMPT_HEADER.lower()] for _, r in routes.of_job(job_id)] == ["1", "2"]
    assert all(live.services.jobs.get(job_id, owner_key_id=None).status is JobStatus.SUCCEEDED for job_id in hooked)
    no_escaped_errors(caplog)


@pytest.mark.settings(webhook_timeout_s=2.0, webhook_max_attempts=3, webhook_backoff_s=0.5)
def test_a_500_receiver_gets_backed_off_retries_then_is_given_up_and_the_sender_lives_on(
    site: tuple[LiveServer, httpx.Client, str],
    receiver: tuple[Receiver, HttpHost],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sdserver.webhooks")
    live, http, key = site
    routes, host = receiver
    _, job_ids = queue_time(live, http, key, [host.url("/fail")] * 3)
    wait_webhooks(live, job_ids, WebhookStatus.FAILED, timeout_s=15)
    backoff = live.services.settings.webhook_backoff_s
    for job_id, row in deliveries(live, job_ids).items():
        assert row.attempts == 3 and row.last_status_code == 500, row
        assert row.gave_up_at is not None and row.next_attempt_at is None, row
        assert "HTTP 500" in row.last_error
        arrivals = routes.of_job(job_id)
        assert [r.headers[ATTEMPT_HEADER.lower()] for _, r in arrivals] == ["1", "2", "3"]
        gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(arrivals)]
        # Exponential backoff: at least backoff x 2^(n-1), less the jitter (time.time() granularity aside).
        for n, gap in enumerate(gaps, start=1):
            assert gap >= backoff * 2 ** (n - 1) * (1 - JITTER) - 0.01, gaps
        print(f"job {job_id}: gaps between attempts {[round(gap, 2) for gap in gaps]} s")

    def gave_up() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "sdserver.webhooks" and "gave up" in r.getMessage()]

    # The sender logs just after it records the give-up, so the last line may trail the database by a moment.
    deadline = time.monotonic() + 5
    while len(gave_up()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(gave_up()) == 3
    no_escaped_errors(caplog)

    # The sender task survived all of it: the next webhook is delivered at once.
    [good] = queue_time(live, http, key, [host.url("/ok")])[1]
    wait_webhooks(live, [good], WebhookStatus.DELIVERED, timeout_s=10)
    assert len(routes.of_job(good)) == 1
