"""Read-only aggregates of the job store for system_details and /metrics: queue, job durations, workers, models."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sdserver.database import utcnow
from sdserver.jobs import JobKind, JobStatus
from sdserver.jobstore.eta import LIVE_WORKER_S, queue_seconds
from sdserver.jobstore.tables import jobs, to_db_time
from sdserver.jobstore.workers import WorkerInfo, workers_seen_since


@dataclass(frozen=True)
class DurationTotal:
    """Succeeded jobs of one kind and model: how many, and their run time (first claim to end) in all."""

    kind: str
    model_id: str
    count: int
    seconds: float


@dataclass(frozen=True)
class StoreStats:
    jobs_by_kind_status: dict[tuple[str, str], int]
    durations: list[DurationTotal]
    workers: list[WorkerInfo]
    # Estimated seconds until a job submitted now would start: the backlog shared over the live workers.
    queue_seconds: int

    def count(self, status: JobStatus, kind: JobKind | None = None) -> int:
        return sum(
            n
            for (k, s), n in self.jobs_by_kind_status.items()
            if s == status.value and (kind is None or k == kind.value)
        )

    def held_models(self) -> dict[str, int]:
        """Each model loaded on some live worker, and on how many."""
        held: dict[str, int] = {}
        for worker in self.workers:
            for model in worker.held_models:
                held[model] = held.get(model, 0) + 1
        return dict(sorted(held.items()))


def read_stats(engine: Engine, *, now: datetime | None = None) -> StoreStats:
    moment = to_db_time(now or utcnow())
    with engine.connect() as conn:
        counts = {
            (str(row.kind), str(row.status)): int(row.n)
            for row in conn.execute(
                sa.select(jobs.c.kind, jobs.c.status, sa.func.count().label("n")).group_by(jobs.c.kind, jobs.c.status)
            )
        }
        live = workers_seen_since(conn, moment - timedelta(seconds=LIVE_WORKER_S))
        return StoreStats(
            jobs_by_kind_status=counts,
            durations=_durations(conn),
            workers=live,
            queue_seconds=queue_seconds(conn, moment, max(1, len(live))),
        )


def _durations(conn: Connection) -> list[DurationTotal]:
    seconds: Any
    if conn.dialect.name == "sqlite":
        # SQLite keeps times as ISO text; julianday turns them into days.
        seconds = (sa.func.julianday(jobs.c.finished_at) - sa.func.julianday(jobs.c.started_at)) * 86400.0
    else:
        seconds = sa.extract("epoch", jobs.c.finished_at - jobs.c.started_at)
    query = (
        sa.select(jobs.c.kind, jobs.c.model_id, sa.func.count().label("n"), sa.func.sum(seconds).label("total"))
        .where(
            jobs.c.status == JobStatus.SUCCEEDED.value,
            jobs.c.started_at.is_not(None),
            jobs.c.finished_at.is_not(None),
        )
        .group_by(jobs.c.kind, jobs.c.model_id)
        .order_by(jobs.c.kind, jobs.c.model_id)
    )
    return [
        DurationTotal(str(row.kind), str(row.model_id), int(row.n), max(0.0, float(row.total or 0.0)))
        for row in conn.execute(query)
    ]
