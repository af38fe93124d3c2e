"""Which queued jobs a worker claims next: oldest first, model affinity without starvation, batches by signature."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sdserver.jobs import JobKind, JobStatus
from sdserver.jobstore.tables import jobs


def claimable(kinds: Collection[JobKind] | None, models: Collection[str] | None) -> list[sa.ColumnElement[bool]]:
    """WHERE clauses for queued jobs this worker can run (None: any kind / any model)."""
    where = [jobs.c.status == JobStatus.QUEUED.value]
    if kinds is not None:
        where.append(jobs.c.kind.in_([JobKind(kind).value for kind in kinds]))
    if models is not None:
        where.append(jobs.c.model_id.in_(list(models)))
    return where


def pick_head(
    conn: Connection,
    where: list[sa.ColumnElement[bool]],
    held_models: Collection[str],
    starved_before: datetime,
    peers_hold: Collection[str] = (),
) -> tuple[int, str, str] | None:
    """Lock the job to run next and return its (id, batch signature, model id), or None.

    In order: with models held, the oldest job that waited past the affinity limit and whose model no live peer
    holds (a loaded model must never starve another model's users; a peer holding that model serves it by
    affinity anyway); the oldest job for a held model; the oldest job for a model no peer holds (so idle
    workers spread over models instead of all loading the first one); the oldest job. Each step is an
    index-ordered scan that stops at its first row, and only the row taken is locked (PostgreSQL skips rows
    another claimer holds; SQLite claims are serialised by the write lock).
    """
    not_held_by_peers: list[sa.ColumnElement[bool]] = [jobs.c.model_id.not_in(list(peers_hold))] if peers_hold else []
    steps: list[list[sa.ColumnElement[bool]]] = []
    if held_models:
        steps.append([jobs.c.created_at <= starved_before, *not_held_by_peers])
        steps.append([jobs.c.model_id.in_(list(held_models))])
    if not_held_by_peers:
        steps.append(not_held_by_peers)
    steps.append([])
    for extra in steps:
        query = (
            sa.select(jobs.c.id, jobs.c.batch_signature, jobs.c.model_id)
            .where(*where, *extra)
            .order_by(jobs.c.created_at, jobs.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        head = conn.execute(query).first()
        if head is not None:
            return int(head.id), str(head.batch_signature), str(head.model_id)
    return None


def batch_mates(conn: Connection, head_id: int, signature: str, limit: int) -> list[int]:
    """Lock up to `limit` more queued jobs that can run in one batch with the head, oldest first."""
    # The signature fixes kind and model, so the head's kind/model filters hold for these too.
    query = (
        sa.select(jobs.c.id)
        .where(jobs.c.status == JobStatus.QUEUED.value, jobs.c.batch_signature == signature, jobs.c.id != head_id)
        .order_by(jobs.c.created_at, jobs.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [int(job_id) for job_id in conn.execute(query).scalars()]
