"""Webhook sender: signatures, bodies, the retry and give-up rules, concurrency, and the SSRF guard on receivers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from pydantic import SecretStr

from sdserver import __version__
from sdserver.auth import KeyStore
from sdserver.config import Settings
from sdserver.database import create_db_engine, utcnow
from sdserver.errors import NotFoundError
from sdserver.job_params import FakeParams
from sdserver.jobs import Job, JobKind, JobSpec, JobStatus, WebhookStatus
from sdserver.netguard import FetchPolicy
from sdserver.webhooks import WebhookSender, sign, verify_signature, webhook_secret
from tests.support.http_host import Hang, HttpHost, RecordedRequest, Redirect, Reply

T = TypeVar("T")

SECRET = b"test-webhook-secret"
LOCAL = FetchPolicy(allowlist=("127.0.0.1",), timeout_s=5.0, max_redirects=3, max_bytes=1_000_000)
CLOSED = replace(LOCAL, allowlist=())


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "fetch_allowlist": ["127.0.0.1"],
        "webhook_timeout_s": 2.0,
        "webhook_max_attempts": 3,
        "webhook_backoff_s": 0.05,
        **overrides,
    }
    return Settings(**values)


def render(job: Job) -> dict[str, Any]:
    """Stands in for the API's fetch body; the non-ASCII prompt checks the body is UTF-8, not escaped."""
    return {
        "status": "success",
        "id": job.id,
        "output": list(job.future_links),
        "meta": {"prompt": "phare — 灯台", "seed": 7},
    }


def make_job(job_id: int, webhook_url: str | None, track_id: str | int | None = None) -> Job:
    return Job(
        id=job_id,
        owner_key_id=1,
        kind=JobKind.TEXT2IMG,
        model_id="test-ok",
        params=FakeParams(),
        output_keys=(f"out/{job_id}.png",),
        future_links=(f"http://files.example/out/{job_id}.png",),
        width=64,
        height=64,
        steps=4,
        scheduler="",
        status=JobStatus.SUCCEEDED,
        attempts=1,
        max_attempts=3,
        created_at=utcnow(),
        webhook_url=webhook_url,
        track_id=track_id,
        webhook_status=WebhookStatus.PENDING,
    )


@dataclass(frozen=True)
class FakeDelivery:
    id: int
    job_id: int
    url: str
    attempts: int
    next_attempt_at: datetime


@dataclass(frozen=True)
class Attempt:
    delivery_id: int
    delivered: bool
    status_code: int | None
    error: str | None
    next_attempt_at: datetime | None
    recorded_at: datetime


@dataclass
class _Row:
    delivery: FakeDelivery
    state: str = "pending"  # pending | delivered | failed
    leased_until: datetime = field(default_factory=lambda: datetime.min.replace(tzinfo=UTC))


class FakeOutbox:
    """The job store's outbox API in memory, with the spec's signatures and due/lease rules (a fake, not a mock)."""

    def __init__(self) -> None:
        self.jobs: dict[int, Job] = {}
        self.rows: dict[int, _Row] = {}
        self.attempts: list[Attempt] = []
        # Set at the first recorded attempt, for tests that watch a running sender.
        self.recorded = threading.Event()
        self._lock = threading.Lock()

    def add(self, job: Job) -> int:
        assert job.webhook_url is not None
        self.jobs[job.id] = job
        delivery_id = len(self.rows) + 1
        self.rows[delivery_id] = _Row(FakeDelivery(delivery_id, job.id, job.webhook_url, 0, utcnow()))
        return delivery_id

    def make_due(self) -> None:
        """Skip the wait for the next attempt (for retry delays too long to sleep through in a test)."""
        with self._lock:
            for row in self.rows.values():
                row.delivery = replace(row.delivery, next_attempt_at=utcnow())

    def claim_due_webhooks(self, *, limit: int, lease_s: float) -> list[FakeDelivery]:
        assert lease_s > 0
        now = utcnow()
        with self._lock:
            due = [
                row
                for row in self.rows.values()
                if row.state == "pending" and row.delivery.next_attempt_at <= now and row.leased_until <= now
            ][:limit]
            for row in due:
                row.leased_until = now + timedelta(seconds=lease_s)
            return [row.delivery for row in due]

    def record_webhook_attempt(
        self,
        delivery_id: int,
        *,
        delivered: bool,
        status_code: int | None,
        error: str | None,
        next_attempt_at: datetime | None,
    ) -> None:
        with self._lock:
            row = self.rows[delivery_id]
            self.attempts.append(Attempt(delivery_id, delivered, status_code, error, next_attempt_at, utcnow()))
            row.state = "delivered" if delivered else ("pending" if next_attempt_at is not None else "failed")
            next_at = next_attempt_at or row.delivery.next_attempt_at
            row.delivery = replace(row.delivery, attempts=row.delivery.attempts + 1, next_attempt_at=next_at)
            row.leased_until = datetime.min.replace(tzinfo=UTC)
        self.recorded.set()

    def get(self, job_id: int, *, owner_key_id: int | None) -> Job:
        assert owner_key_id is None
        if job_id not in self.jobs:
            raise NotFoundError()
        return self.jobs[job_id]

    def state(self, delivery_id: int) -> str:
        return self.rows[delivery_id].state


def sender_for(outbox: Any, settings: Settings, policy: FetchPolicy = LOCAL, **kwargs: Any) -> WebhookSender:
    return WebhookSender(outbox, policy, SECRET, render, settings, **kwargs)


def deliver_until_settled(sender: WebhookSender, outbox: FakeOutbox, deadline_s: float = 8.0) -> None:
    """Run passes (sleeping briefly between) until no delivery is pending."""
    end = time.monotonic() + deadline_s
    while any(row.state == "pending" for row in outbox.rows.values()):
        assert time.monotonic() < end, "deliveries did not settle in time"
        if run(sender.deliver_due()) == 0:
            time.sleep(0.01)


def failing_then(statuses: Sequence[int]) -> Callable[[RecordedRequest], Reply]:
    """A route answering each status in turn, then 200 for ever."""
    remaining = list(statuses)
    lock = threading.Lock()

    def route(_request: RecordedRequest) -> Reply:
        with lock:
            status = remaining.pop(0) if remaining else 200
        return Reply(b'{"ok":true}', "application/json", status=status)

    return route


# --- signatures


def test_sign_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"id":1}'
    expected = hmac.new(SECRET, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1700000000, body) == f"sha256={expected}"


def test_verify_signature_accepts_its_own_signature_as_str_or_int_timestamp() -> None:
    now = 1_700_000_000
    header = sign(SECRET, now, b"{}")
    assert verify_signature(SECRET, now, b"{}", header, now=now)
    assert verify_signature(SECRET, str(now), b"{}", header, now=now + 299)
    assert verify_signature(SECRET, str(now), b"{}", header) is False  # real clock: long stale


@pytest.mark.parametrize(
    ("secret", "timestamp", "body", "header_of"),
    [
        (SECRET, "1700000000", b'{"id":2}', "original"),
        (SECRET, "1700000001", b'{"id":1}', "original"),
        (b"another-secret", "1700000000", b'{"id":1}', "original"),
        (SECRET, "1700000000", b'{"id":1}', "no-scheme"),
        (SECRET, "1700000000", b'{"id":1}', "truncated"),
        (SECRET, "1700000000", b'{"id":1}', "non-ascii"),
        (SECRET, "1700000000", b'{"id":1}', "empty"),
        (SECRET, "17e8", b'{"id":1}', "original"),
        (SECRET, "", b'{"id":1}', "original"),
        (SECRET, "-1700000000", b'{"id":1}', "original"),
    ],
    ids=[
        "body-changed",
        "timestamp-changed",
        "secret-changed",
        "header-without-scheme",
        "header-truncated",
        "header-non-ascii",
        "header-empty",
        "timestamp-not-digits",
        "timestamp-empty",
        "timestamp-negative",
    ],
)
def test_verify_signature_refuses_any_change(secret: bytes, timestamp: str, body: bytes, header_of: str) -> None:
    original = sign(SECRET, 1700000000, b'{"id":1}')
    header = {
        "original": original,
        "no-scheme": original.removeprefix("sha256="),
        "truncated": original[:-2],
        "non-ascii": original[:-1] + "é",
        "empty": "",
    }[header_of]
    assert verify_signature(secret, timestamp, body, header, now=1700000000) is False


@pytest.mark.parametrize("offset", [-301, 301, -86400], ids=["stale", "future", "a-day-old"])
def test_verify_signature_refuses_timestamps_outside_the_tolerance(offset: int) -> None:
    header = sign(SECRET, 1700000000, b"{}")
    assert verify_signature(SECRET, 1700000000, b"{}", header, now=1700000000 + offset) is False
    assert verify_signature(SECRET, 1700000000, b"{}", header, now=1700000000 + offset, tolerance_s=86400)


def test_webhook_secret_prefers_settings_else_one_kept_in_the_database(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    configured = make_settings(tmp_path, webhook_secret=SecretStr("from-settings"))
    assert webhook_secret(configured, engine) == b"from-settings"
    generated = webhook_secret(make_settings(tmp_path), engine)
    assert len(generated) == 32
    assert webhook_secret(make_settings(tmp_path), engine) == generated


# --- body and headers


@pytest.mark.parametrize("track_id", [42, "order-42", None], ids=["int", "str", "absent"])
def test_body_is_the_rendered_reply_plus_track_id_signed_as_sent(tmp_path: Path, track_id: str | int | None) -> None:
    outbox = FakeOutbox()
    with HttpHost({"/hook": Reply(b"ok")}) as host:
        job = make_job(7, host.url("/hook?src=test"), track_id)
        delivery_id = outbox.add(job)
        assert run(sender_for(outbox, make_settings(tmp_path)).deliver_due()) == 1
        [request] = host.requests_to("/hook")

    assert request.method == "POST"
    assert request.path == "/hook?src=test"
    payload = json.loads(request.body)
    assert payload == {**render(job), "track_id": track_id}
    assert "track_id" in payload and type(payload["track_id"]) is type(track_id)
    # Compact UTF-8 JSON: no padding, non-ASCII as is.
    assert b", " not in request.body and "灯台".encode() in request.body
    headers = request.headers
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == f"sdserver/{__version__}"
    assert headers["x-sdserver-job-id"] == "7"
    assert headers["x-sdserver-delivery-attempt"] == "1"
    timestamp = headers["x-sdserver-timestamp"]
    assert abs(int(timestamp) - time.time()) < 5
    assert verify_signature(SECRET, timestamp, request.body, headers["x-sdserver-signature"])
    assert not verify_signature(SECRET, timestamp, request.body + b" ", headers["x-sdserver-signature"])

    [attempt] = outbox.attempts
    assert (attempt.delivered, attempt.status_code, attempt.error, attempt.next_attempt_at) == (True, 200, None, None)
    assert outbox.state(delivery_id) == "delivered"


# --- retries and giving up


def test_two_5xx_then_200_is_delivered_on_attempt_3_after_the_backoff(tmp_path: Path) -> None:
    outbox = FakeOutbox()
    arrivals: list[float] = []
    answers = failing_then([500, 503])

    def route(request: RecordedRequest) -> Reply:
        arrivals.append(time.monotonic())
        return answers(request)

    with HttpHost({"/hook": route}) as host:
        delivery_id = outbox.add(make_job(1, host.url("/hook")))
        deliver_until_settled(sender_for(outbox, make_settings(tmp_path, webhook_max_attempts=5)), outbox)
        attempt_headers = [r.headers["x-sdserver-delivery-attempt"] for r in host.requests_to("/hook")]

    assert outbox.state(delivery_id) == "delivered"
    assert attempt_headers == ["1", "2", "3"]
    first, second, third = outbox.attempts
    assert (first.delivered, first.status_code, second.status_code, third.status_code) == (False, 500, 503, 200)
    assert first.error == "the receiver answered HTTP 500"
    assert third.delivered and third.next_attempt_at is None
    # backoff 0.05 s x 2^(attempt-1), +-20 %: the retries waited at least that long (the exact schedule is
    # checked with a frozen clock below), and were not put off much longer.
    assert arrivals[1] - arrivals[0] >= 0.05 * 0.8 - 0.005
    assert arrivals[2] - arrivals[1] >= 0.10 * 0.8 - 0.005
    for attempt, base in ((first, 0.05), (second, 0.10)):
        assert attempt.next_attempt_at is not None
        assert (attempt.next_attempt_at - attempt.recorded_at).total_seconds() <= base * 1.2


@pytest.mark.parametrize(
    ("status", "retry_after", "expected_delay_s", "jittered"),
    [
        (429, "30", 30.0, False),
        (503, "7", 7.0, False),
        (429, "0", 0.05, True),
        (429, "Wed, 21 Oct 2015 07:28:00 GMT", 0.05, True),
        (500, "30", 0.05, True),
        (408, None, 0.05, True),
        (429, "99999", 3600.0, False),
    ],
    ids=[
        "429-retry-after",
        "503-retry-after",
        "retry-after-smaller-than-backoff",
        "http-date-ignored",
        "500-ignores-retry-after",
        "408-retryable",
        "capped-at-an-hour",
    ],
)
def test_retryable_statuses_and_retry_after(
    tmp_path: Path, status: int, retry_after: str | None, expected_delay_s: float, jittered: bool
) -> None:
    outbox = FakeOutbox()
    now = utcnow()
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    with HttpHost({"/hook": Reply(b"slow down", status=status, headers=headers)}) as host:
        delivery_id = outbox.add(make_job(1, host.url("/hook")))
        run(sender_for(outbox, make_settings(tmp_path), clock=lambda: now).deliver_due())

    [attempt] = outbox.attempts
    assert (attempt.delivered, attempt.status_code) == (False, status)
    assert attempt.next_attempt_at is not None
    delay = (attempt.next_attempt_at - now).total_seconds()
    if jittered:
        assert expected_delay_s * 0.8 <= delay <= expected_delay_s * 1.2
    else:
        assert delay == expected_delay_s
    assert outbox.state(delivery_id) == "pending"


def test_retry_after_is_honoured_then_delivered(tmp_path: Path) -> None:
    outbox = FakeOutbox()
    answers = iter([Reply(status=429, headers={"Retry-After": "30"}), Reply(b"ok")])
    with HttpHost({"/hook": lambda _r: next(answers)}) as host:
        delivery_id = outbox.add(make_job(1, host.url("/hook")))
        sender = sender_for(outbox, make_settings(tmp_path))
        assert run(sender.deliver_due()) == 1
        assert run(sender.deliver_due()) == 0  # not due for 30 s
        outbox.make_due()
        assert run(sender.deliver_due()) == 1
    assert outbox.state(delivery_id) == "delivered"
    assert [a.status_code for a in outbox.attempts] == [429, 200]


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422], ids=lambda s: f"http-{s}")
def test_other_4xx_gives_up_after_one_attempt(tmp_path: Path, status: int) -> None:
    outbox = FakeOutbox()
    with HttpHost({"/hook": Reply(b"no", status=status)}) as host:
        delivery_id = outbox.add(make_job(1, host.url("/hook")))
        deliver_until_settled(sender_for(outbox, make_settings(tmp_path)), outbox)
        assert len(host.requests) == 1
    [attempt] = outbox.attempts
    assert (attempt.delivered, attempt.status_code, attempt.next_attempt_at) == (False, status, None)
    assert attempt.error == f"the receiver answered HTTP {status}"
    assert outbox.state(delivery_id) == "failed"


def test_redirect_is_not_followed_and_gives_up(tmp_path: Path) -> None:
    outbox = FakeOutbox()
    with HttpHost() as host:
        host.routes["/hook"] = Redirect(host.url("/elsewhere"), status=307)
        outbox.add(make_job(1, host.url("/hook")))
        deliver_until_settled(sender_for(outbox, make_settings(tmp_path)), outbox)
        assert host.requests_to("/elsewhere") == []
    [attempt] = outbox.attempts
    assert attempt.status_code == 307 and attempt.next_attempt_at is None
    assert attempt.error is not None and "redirect" in attempt.error


def test_always_500_gives_up_after_max_attempts(tmp_path: Path) -> None:
    outbox = FakeOutbox()
    with HttpHost({"/hook": Reply(b"down", status=500)}) as host:
        delivery_id = outbox.add(make_job(1, host.url("/hook")))
        # A frozen clock makes the schedule exact; the fake store still waits in real time (past `now`).
        now = utcnow()
        sender = sender_for(outbox, make_settings(tmp_path, webhook_max_attempts=4), clock=lambda: now)
        deliver_until_settled(sender, outbox)
        assert len(host.requests) == 4
    delays = [(a.next_attempt_at - now).total_seconds() if a.next_attempt_at else None for a in outbox.attempts]
    assert delays[3] is None
    for delay, base in zip(delays[:3], (0.05, 0.10, 0.20), strict=True):
        assert delay is not None and base * 0.8 <= delay <= base * 1.2
    assert all(a.status_code == 500 and not a.delivered for a in outbox.attempts)
    assert outbox.state(delivery_id) == "failed"


def test_connection_refused_is_retried(tmp_path: Path) -> None:
    with HttpHost() as closed:
        url = closed.url("/hook")  # the port is free again once the host stops
    outbox = FakeOutbox()
    outbox.add(make_job(1, url))
    run(sender_for(outbox, make_settings(tmp_path)).deliver_due())
    [attempt] = outbox.attempts
    assert attempt.status_code is None and attempt.next_attempt_at is not None
    assert attempt.error is not None and "connect" in attempt.error


def test_hanging_receiver_times_out_as_retryable_without_delaying_a_healthy_one(tmp_path: Path) -> None:
    outbox = FakeOutbox()
    arrived: list[float] = []

    def healthy(_request: RecordedRequest) -> Reply:
        arrived.append(time.monotonic())
        return Reply(b"ok")

    with HttpHost({"/hang": Hang(30), "/ok": healthy}) as host:
        # The hanging receiver is claimed first.
        hanging_id = outbox.add(make_job(1, host.url("/hang")))
        healthy_id = outbox.add(make_job(2, host.url("/ok")))
        sender = sender_for(outbox, make_settings(tmp_path, webhook_timeout_s=0.3))
        started = time.monotonic()
        assert run(sender.deliver_due()) == 2
        elapsed = time.monotonic() - started

    assert elapsed >= 0.3
    # The hanging POST started after `started`, so it cannot have timed out before started + 0.3 s.
    assert arrived[0] - started < 0.3
    # The healthy delivery was recorded before the hanging one gave out.
    assert [a.delivery_id for a in outbox.attempts] == [healthy_id, hanging_id]
    timed_out = outbox.attempts[1]
    assert timed_out.error == "timed out after 0.3 s"
    assert timed_out.status_code is None and timed_out.next_attempt_at is not None
    assert outbox.state(hanging_id) == "pending" and outbox.state(healthy_id) == "delivered"


def test_deliveries_run_concurrently_but_bounded(tmp_path: Path) -> None:
    outbox = FakeOutbox()
    lock = threading.Lock()
    in_flight = [0, 0]  # now, most seen
    # The first eight requests wait for each other, so eight in flight at once is seen only if the sender
    # really runs eight at once. Later ones pass straight through and overlap the first eight finishing,
    # so a sender without a bound would show more than eight.
    eight_in = threading.Event()

    def gated(_request: RecordedRequest) -> Reply:
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
            if in_flight[0] == 8:
                eight_in.set()
        eight_in.wait(5)
        time.sleep(0.05)
        with lock:
            in_flight[0] -= 1
        return Reply(b"ok")

    with HttpHost({"/hook": gated}) as host:
        for job_id in range(1, 17):
            outbox.add(make_job(job_id, host.url("/hook")))
        sender = sender_for(outbox, make_settings(tmp_path, webhook_timeout_s=10.0))
        assert run(sender.deliver_due()) == 16
    assert in_flight[1] == 8
    assert all(a.delivered for a in outbox.attempts) and len(outbox.attempts) == 16


# --- the SSRF guard


@pytest.mark.parametrize(
    ("url", "policy", "reason"),
    [
        ("http://10.0.0.1/hook", LOCAL, "10.0.0.1 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", LOCAL, "a cloud metadata address"),
        ("http://[::1]/hook", LOCAL, "a loopback address"),
        ("HOST", CLOSED, "127.0.0.1 is a loopback address"),
        ("ftp://example.com/hook", LOCAL, "only http and https"),
    ],
    ids=["private", "metadata", "ipv6-loopback", "loopback-not-allow-listed", "not-http"],
)
def test_refused_receivers_give_up_at_once_without_a_request(
    tmp_path: Path, url: str, policy: FetchPolicy, reason: str
) -> None:
    outbox = FakeOutbox()
    with HttpHost({"/hook": Reply(b"ok")}) as host:
        delivery_id = outbox.add(make_job(1, host.url("/hook") if url == "HOST" else url))
        settings = make_settings(tmp_path, fetch_allowlist=list(policy.allowlist))
        deliver_until_settled(sender_for(outbox, settings, policy), outbox)
        assert host.requests == []
    [attempt] = outbox.attempts
    assert attempt.error is not None and attempt.error.startswith("refused") and reason in attempt.error
    assert (attempt.delivered, attempt.status_code, attempt.next_attempt_at) == (False, None, None)
    assert outbox.state(delivery_id) == "failed"


# --- bodies that cannot be built, and the loop


def test_a_missing_job_gives_up(tmp_path: Path) -> None:
    outbox = FakeOutbox()
    delivery_id = outbox.add(make_job(1, "http://127.0.0.1:9/hook"))
    del outbox.jobs[1]
    run(sender_for(outbox, make_settings(tmp_path)).deliver_due())
    [attempt] = outbox.attempts
    assert attempt.error == "job 1 no longer exists" and attempt.next_attempt_at is None
    assert outbox.state(delivery_id) == "failed"


def test_a_render_failure_counts_as_a_retryable_attempt(tmp_path: Path) -> None:
    def broken(_job: Job) -> dict[str, Any]:
        raise OSError("object store unreachable")

    outbox = FakeOutbox()
    outbox.add(make_job(1, "http://127.0.0.1:9/hook"))
    sender = WebhookSender(outbox, LOCAL, SECRET, broken, make_settings(tmp_path))
    run(sender.deliver_due())
    [attempt] = outbox.attempts
    assert attempt.error == "the webhook body could not be built: object store unreachable"
    assert attempt.next_attempt_at is not None


class FlakyOutbox(FakeOutbox):
    """Its first claim fails the way a briefly unreachable database does."""

    def __init__(self) -> None:
        super().__init__()
        self.claims = 0

    def claim_due_webhooks(self, *, limit: int, lease_s: float) -> list[FakeDelivery]:
        self.claims += 1
        if self.claims == 1:
            raise ConnectionError("database unreachable")
        return super().claim_due_webhooks(limit=limit, lease_s=lease_s)


def test_run_forever_survives_a_failed_pass_and_stops_on_request(tmp_path: Path) -> None:
    outbox = FlakyOutbox()

    async def scenario(url: str) -> None:
        stop = anyio.Event()
        sender = sender_for(outbox, make_settings(tmp_path), poll_s=0.02)
        async with anyio.create_task_group() as group:
            group.start_soon(sender.run_forever, stop)
            await anyio.sleep(0.05)
            outbox.add(make_job(1, url))
            assert await anyio.to_thread.run_sync(outbox.recorded.wait, 5.0)
            stop.set()

    with HttpHost({"/hook": Reply(b"ok")}) as host:
        run(scenario(host.url("/hook")))
    assert outbox.claims >= 2
    assert [a.delivered for a in outbox.attempts] == [True]


# --- with the real job store


@dataclass(frozen=True)
class RealStore:
    """A `sdserver.jobstore.store.JobStore` on SQLite (typed loosely so this file loads before store.py exists)."""

    jobs: Any
    owner_key_id: int


@pytest.fixture
def real_store(tmp_path: Path) -> RealStore:
    from sdserver.jobstore.store import JobStore

    engine = create_db_engine(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    owner, _ = KeyStore(engine).create("webhook-tests")
    jobs = JobStore(engine)
    jobs.register_worker("w1", device="cpu", engines=["test"])
    return RealStore(jobs, owner.id)


def finish_job(store: RealStore, url: str, *, track_id: str | int | None, succeed: bool = True) -> Job:
    """Submit, claim and end one job, which enqueues its webhook."""
    spec = JobSpec(
        owner_key_id=store.owner_key_id,
        kind=JobKind.TEXT2IMG,
        model_id="test-ok",
        params=FakeParams(),
        output_keys=("out/a.png",),
        future_links=("http://files.example/out/a.png",),
        width=64,
        height=64,
        steps=4,
        webhook_url=url,
        track_id=track_id,
    )
    job = store.jobs.submit(spec)
    [claimed] = store.jobs.claim("w1", lease_s=30)
    assert claimed.id == job.id
    if succeed:
        ended: Job = store.jobs.complete(job.id, "w1", result={}, seconds_per_step=0.01)
    else:
        ended = store.jobs.fail(job.id, "w1", code="engine_error", message="boom")
    return ended


def webhook_status(store: RealStore, job_id: int) -> WebhookStatus:
    status: WebhookStatus = store.jobs.get(job_id, owner_key_id=None).webhook_status
    return status


def test_real_store_delivers_a_finished_job_once(real_store: RealStore, tmp_path: Path) -> None:
    with HttpHost({"/hook": Reply(b"ok")}) as host:
        job = finish_job(real_store, host.url("/hook"), track_id="order-1")
        sender = sender_for(real_store.jobs, make_settings(tmp_path))
        assert run(sender.deliver_due()) == 1
        assert run(sender.deliver_due()) == 0
        [request] = host.requests
    assert json.loads(request.body)["track_id"] == "order-1"
    assert json.loads(request.body)["id"] == job.id
    assert request.headers["x-sdserver-job-id"] == str(job.id)
    assert webhook_status(real_store, job.id) is WebhookStatus.DELIVERED


def test_real_store_retries_then_delivers(real_store: RealStore, tmp_path: Path) -> None:
    with HttpHost({"/hook": failing_then([500])}) as host:
        job = finish_job(real_store, host.url("/hook"), track_id=5)
        sender = sender_for(real_store.jobs, make_settings(tmp_path))
        assert run(sender.deliver_due()) == 1
        assert webhook_status(real_store, job.id) is WebhookStatus.RETRYING
        end = time.monotonic() + 5
        while webhook_status(real_store, job.id) is not WebhookStatus.DELIVERED:
            assert time.monotonic() < end
            run(sender.deliver_due())
            time.sleep(0.02)
        assert [r.headers["x-sdserver-delivery-attempt"] for r in host.requests] == ["1", "2"]


def test_real_store_gives_up_on_a_failed_job_webhook_answered_400(real_store: RealStore, tmp_path: Path) -> None:
    with HttpHost({"/hook": Reply(b"bad", status=400)}) as host:
        job = finish_job(real_store, host.url("/hook"), track_id=None, succeed=False)
        sender = sender_for(real_store.jobs, make_settings(tmp_path))
        assert run(sender.deliver_due()) == 1
        assert run(sender.deliver_due()) == 0
        [request] = host.requests
    assert json.loads(request.body)["track_id"] is None
    assert webhook_status(real_store, job.id) is WebhookStatus.FAILED
