"""Webhook delivery from the job outbox: signed JSON POSTs through the SSRF guard, retried with backoff."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

import anyio
import anyio.to_thread
from sqlalchemy.engine import Engine

from sdserver import __version__
from sdserver.config import Settings
from sdserver.database import server_secret, utcnow
from sdserver.errors import FetchError, NotFoundError
from sdserver.jobs import Job
from sdserver.netguard import FetchedResponse, FetchPolicy, guarded_request

log = logging.getLogger(__name__)

TIMESTAMP_HEADER = "X-Sdserver-Timestamp"
SIGNATURE_HEADER = "X-Sdserver-Signature"
JOB_ID_HEADER = "X-Sdserver-Job-Id"
ATTEMPT_HEADER = "X-Sdserver-Delivery-Attempt"
SIGNATURE_SCHEME = "sha256="

# A receiver's reply body is never used; the cap only stops a hostile one from streaming at us.
MAX_REPLY_BYTES = 64 * 1024
# Deliveries in flight at once, and claimed per pass: one hanging receiver holds one slot, not the pass.
CONCURRENCY = 8
BATCH = 16
MAX_DELAY_S = 3600.0
JITTER = 0.2
# A claim is locked for every round of the pass plus time to render bodies and record attempts.
_LEASE_MARGIN_S = 60.0
_ERROR_LIMIT = 500
_RETRY_AFTER_CODES = frozenset({429, 503})


class OutboxDelivery(Protocol):
    """One due delivery as the job store hands it out (`store.WebhookDelivery` fits)."""

    @property
    def id(self) -> int: ...
    @property
    def job_id(self) -> int: ...
    @property
    def url(self) -> str: ...
    @property
    def attempts(self) -> int: ...


class WebhookOutbox(Protocol):
    """The part of `JobStore` the sender uses."""

    def claim_due_webhooks(self, *, limit: int, lease_s: float) -> Sequence[OutboxDelivery]: ...

    def record_webhook_attempt(
        self,
        delivery_id: int,
        *,
        delivered: bool,
        status_code: int | None,
        error: str | None,
        next_attempt_at: datetime | None,
    ) -> None: ...

    def get(self, job_id: int, *, owner_key_id: int | None) -> Job: ...


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`; the timestamp inside stops replays."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return SIGNATURE_SCHEME + digest


def verify_signature(
    secret: bytes,
    timestamp: str | int,
    body: bytes,
    header: str,
    *,
    tolerance_s: int = 300,
    now: float | None = None,
) -> bool:
    """True if `header` signs exactly `body` at `timestamp`, and the timestamp is within `tolerance_s` of now."""
    seconds = _parse_timestamp(timestamp)
    if seconds is None:
        return False
    current = time.time() if now is None else now
    # Both ways: a timestamp far in the future is as suspicious as an old one.
    if abs(current - seconds) > tolerance_s:
        return False
    candidate = header.strip()
    # compare_digest refuses non-ASCII str; such a header cannot be ours anyway.
    if not candidate.isascii():
        return False
    return hmac.compare_digest(sign(secret, seconds, body), candidate)


def _parse_timestamp(timestamp: str | int) -> int | None:
    if isinstance(timestamp, int):
        return timestamp
    text = timestamp.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        return None
    return int(text)


def webhook_secret(settings: Settings, engine: Engine) -> bytes:
    """The configured secret (UTF-8), else one generated once and kept in the database for every process."""
    if settings.webhook_secret is not None and settings.webhook_secret.get_secret_value():
        return settings.webhook_secret.get_secret_value().encode()
    return server_secret(engine, "webhook_signing")


def encode_body(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON; these exact bytes are signed and sent."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


@dataclasses.dataclass(frozen=True)
class _Outcome:
    """What one attempt came to. No error means delivered; `retryable` errors are tried again later."""

    status_code: int | None = None
    error: str | None = None
    retryable: bool = False
    retry_after_s: float | None = None

    @property
    def delivered(self) -> bool:
        return self.error is None


def _retry_after_s(reply: FetchedResponse) -> float | None:
    # Only the delay-seconds form; an HTTP-date is rare from webhook receivers and falls back to backoff.
    value = reply.headers.get("retry-after", "").strip()
    return float(value) if value.isascii() and value.isdigit() else None


def _judge_reply(reply: FetchedResponse) -> _Outcome:
    code = reply.status_code
    if 200 <= code < 300:
        return _Outcome(status_code=code)
    error = f"the receiver answered HTTP {code}"
    if 300 <= code < 400:
        return _Outcome(code, f"{error}; webhooks do not follow redirects, give the final URL")
    if code in (408, 429) or 500 <= code < 600:
        retry_after = _retry_after_s(reply) if code in _RETRY_AFTER_CODES else None
        return _Outcome(code, error, retryable=True, retry_after_s=retry_after)
    return _Outcome(code, error)


class WebhookSender:
    """Claims due deliveries from the outbox, POSTs them signed, and records each attempt and what comes next."""

    def __init__(
        self,
        jobs: WebhookOutbox,
        policy: FetchPolicy,
        secret: bytes,
        render: Callable[[Job], dict[str, Any]],
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
        poll_s: float = 0.5,
    ) -> None:
        self._jobs = jobs
        # Keep the operator's allow-list; the rest is webhook-specific. Redirects are never followed: a
        # POST that bounces elsewhere is a misconfigured receiver, and the guard would re-check it anyway.
        self._policy = dataclasses.replace(
            policy, timeout_s=settings.webhook_timeout_s, max_redirects=0, max_bytes=MAX_REPLY_BYTES
        )
        self._secret = secret
        self._render = render
        self._settings = settings
        self._clock = clock
        self._poll_s = poll_s
        self._lease_s = settings.webhook_timeout_s * math.ceil(BATCH / CONCURRENCY) + _LEASE_MARGIN_S
        # Jitter only spreads retries out; it needs no cryptographic randomness.
        self._rng = random.Random()  # noqa: S311

    async def run_forever(self, stop: anyio.Event | None = None) -> None:
        """Deliver until `stop` is set (or the task is cancelled); a failed pass is logged, never fatal."""
        stop = stop or anyio.Event()
        while not stop.is_set():
            try:
                attempted = await self.deliver_due()
            except Exception:
                # The store may be briefly unreachable; wait longer than idle so an outage does not spam the log.
                log.exception("webhook pass failed; trying again shortly")
                pause = self._poll_s * 4
            else:
                pause = 0.0 if attempted else self._poll_s
            if pause:
                with anyio.move_on_after(pause):
                    await stop.wait()

    async def deliver_due(self) -> int:
        """One pass: claim what is due, deliver it concurrently, record every attempt. Returns how many."""
        claim = functools.partial(self._jobs.claim_due_webhooks, limit=BATCH, lease_s=self._lease_s)
        due = await anyio.to_thread.run_sync(claim)
        limiter = anyio.CapacityLimiter(CONCURRENCY)
        async with anyio.create_task_group() as group:
            for delivery in due:
                group.start_soon(self._deliver_isolated, delivery, limiter)
        return len(due)

    async def _deliver_isolated(self, delivery: OutboxDelivery, limiter: anyio.CapacityLimiter) -> None:
        async with limiter:
            try:
                await self._deliver(delivery)
            except Exception:
                # One broken delivery (the store failing to record it) must not cancel its siblings in the task
                # group. Its lease runs out and a later pass offers it again.
                log.exception("webhook delivery %d (job %d) failed unexpectedly", delivery.id, delivery.job_id)

    async def _deliver(self, delivery: OutboxDelivery) -> None:
        attempt = delivery.attempts + 1
        prepared = await self._prepare(delivery)
        if isinstance(prepared, _Outcome):
            outcome = prepared
        else:
            headers = self._headers(delivery.job_id, attempt, prepared)
            outcome = await self._post(delivery.url, prepared, headers)
        next_attempt_at = self._next_attempt_at(attempt, outcome)
        record = functools.partial(
            self._jobs.record_webhook_attempt,
            delivery.id,
            delivered=outcome.delivered,
            status_code=outcome.status_code,
            error=_clip(outcome.error),
            next_attempt_at=next_attempt_at,
        )
        await anyio.to_thread.run_sync(record)
        _log_outcome(delivery, attempt, outcome, next_attempt_at)

    async def _prepare(self, delivery: OutboxDelivery) -> bytes | _Outcome:
        """The signed body's bytes, or the outcome that stands in for an attempt when there is nothing to send."""
        get = functools.partial(self._jobs.get, delivery.job_id, owner_key_id=None)
        try:
            job = await anyio.to_thread.run_sync(get)
        except NotFoundError:
            return _Outcome(error=f"job {delivery.job_id} no longer exists")
        try:
            # render may read outputs from the object store (base64 replies): blocking, and it may fail briefly.
            payload = await anyio.to_thread.run_sync(self._render, job)
        except Exception as exc:
            # Counted as a failed attempt so a body that can never be built still ends in `failed`.
            log.exception("building the webhook body of job %d failed", job.id)
            return _Outcome(error=f"the webhook body could not be built: {exc}", retryable=True)
        try:
            return encode_body({**payload, "track_id": job.track_id})
        except (TypeError, ValueError) as exc:
            return _Outcome(error=f"the webhook body is not valid JSON: {exc}")

    def _headers(self, job_id: int, attempt: int, body: bytes) -> dict[str, str]:
        timestamp = int(self._clock().timestamp())
        return {
            "Content-Type": "application/json",
            "User-Agent": f"sdserver/{__version__}",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
            JOB_ID_HEADER: str(job_id),
            ATTEMPT_HEADER: str(attempt),
        }

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> _Outcome:
        try:
            reply = await guarded_request(
                "POST", url, self._policy, field="webhook", headers=headers, content=body, follow_redirects=False
            )
        except FetchError as exc:
            # netguard words every guard refusal "refused: ..." (scheme, private or metadata address outside
            # the allow-list, malformed URL): retrying cannot help. Every other reason is the network (DNS,
            # connect, timeout, an oversized reply) and may heal, so it is retried.
            return _Outcome(error=exc.reason, retryable=not exc.reason.startswith("refused"))
        return _judge_reply(reply)

    def _next_attempt_at(self, attempt: int, outcome: _Outcome) -> datetime | None:
        """When to try again, or None when delivered or given up."""
        if outcome.delivered or not outcome.retryable or attempt >= self._settings.webhook_max_attempts:
            return None
        delay = self._settings.webhook_backoff_s * 2 ** (attempt - 1) * self._rng.uniform(1 - JITTER, 1 + JITTER)
        if outcome.retry_after_s is not None:
            delay = max(delay, outcome.retry_after_s)
        # A receiver asking for a day is capped too: the budget of attempts is the real limit.
        return self._clock() + timedelta(seconds=min(delay, MAX_DELAY_S))


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= _ERROR_LIMIT:
        return text
    return text[: _ERROR_LIMIT - 3] + "..."


def _log_outcome(delivery: OutboxDelivery, attempt: int, outcome: _Outcome, next_attempt_at: datetime | None) -> None:
    if outcome.delivered:
        log.debug("webhook of job %d delivered on attempt %d", delivery.job_id, attempt)
    elif next_attempt_at is not None:
        log.info("webhook of job %d attempt %d failed (%s); retrying", delivery.job_id, attempt, outcome.error)
    else:
        log.warning("webhook of job %d gave up after attempt %d: %s", delivery.job_id, attempt, outcome.error)
