"""The webhook outbox: deliveries queued with a job's end, locked by one sender at a time, retried or given up."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sdserver.errors import NotFoundError
from sdserver.jobs import WebhookStatus
from sdserver.jobstore.tables import job_webhooks, jobs, stored_time, to_db_time

_MAX_ERROR_TEXT = 2000


@dataclass(frozen=True)
class WebhookDelivery:
    id: int
    job_id: int
    url: str
    attempts: int
    next_attempt_at: datetime


def enqueue_delivery(conn: Connection, job_id: int, url: str, *, now: datetime) -> None:
    conn.execute(
        sa.insert(job_webhooks).values(job_id=job_id, url=url, attempts=0, next_attempt_at=now, created_at=now)
    )


def claim_due(conn: Connection, *, now: datetime, limit: int, lease_s: float) -> list[WebhookDelivery]:
    due = (
        sa.select(job_webhooks)
        .where(
            job_webhooks.c.next_attempt_at <= now,
            sa.or_(job_webhooks.c.locked_until.is_(None), job_webhooks.c.locked_until <= now),
        )
        .order_by(job_webhooks.c.next_attempt_at, job_webhooks.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = conn.execute(due).all()
    if rows:
        conn.execute(
            sa.update(job_webhooks)
            .where(job_webhooks.c.id.in_([row.id for row in rows]))
            .values(locked_until=now + timedelta(seconds=lease_s))
        )
    return [
        WebhookDelivery(row.id, row.job_id, row.url, row.attempts, stored_time(row.next_attempt_at)) for row in rows
    ]


def record_attempt(
    conn: Connection,
    delivery_id: int,
    *,
    now: datetime,
    delivered: bool,
    status_code: int | None,
    error: str | None,
    next_attempt_at: datetime | None,
) -> None:
    outcome: dict[str, Any]
    if delivered:
        outcome, job_state = {"delivered_at": now, "next_attempt_at": None}, WebhookStatus.DELIVERED
    elif next_attempt_at is not None:
        outcome, job_state = {"next_attempt_at": to_db_time(next_attempt_at)}, WebhookStatus.RETRYING
    else:
        outcome, job_state = {"gave_up_at": now, "next_attempt_at": None}, WebhookStatus.FAILED
    record = (
        sa.update(job_webhooks)
        # A delivery already settled (by a sender whose lock ran out meanwhile) keeps its outcome.
        .where(
            job_webhooks.c.id == delivery_id,
            job_webhooks.c.delivered_at.is_(None),
            job_webhooks.c.gave_up_at.is_(None),
        )
        .values(
            attempts=job_webhooks.c.attempts + 1,
            last_status_code=status_code,
            last_error=None if error is None else error[:_MAX_ERROR_TEXT],
            locked_until=None,
            **outcome,
        )
        .returning(job_webhooks.c.job_id)
    )
    job_id = conn.execute(record).scalar_one_or_none()
    if job_id is not None:
        conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(webhook_status=job_state.value))
        return
    if conn.execute(sa.select(job_webhooks.c.id).where(job_webhooks.c.id == delivery_id)).first() is None:
        raise NotFoundError(f"No webhook delivery with id {delivery_id}")
