"""ETA of a queued or running job, from the measured speed of recent jobs of the same model and size."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sdserver.jobs import Job, JobStatus
from sdserver.jobstore.tables import jobs, to_db_time, workers

# Median of this many recent measurements: steady against one slow outlier, quick to follow a change.
_SAMPLES = 20
# With no measurement at all for a model.
DEFAULT_SECONDS_PER_STEP = 1.0
# A worker that has not heartbeaten for this long no longer counts towards throughput.
LIVE_WORKER_S = 60.0


class SpeedBook:
    """Seconds per step by (model, width, height), looked up once per estimate."""

    def __init__(self, conn: Connection):
        self._conn = conn
        self._known: dict[tuple[str, int, int], float] = {}

    def job_seconds(self, model_id: str, width: int, height: int, steps: int) -> float:
        # Jobs without steps (upscaling) still take one unit of work.
        return max(steps, 1) * self.seconds_per_step(model_id, width, height)

    def seconds_per_step(self, model_id: str, width: int, height: int) -> float:
        key = (model_id, width, height)
        if key not in self._known:
            self._known[key] = self._measure(model_id, width, height)
        return self._known[key]

    def _measure(self, model_id: str, width: int, height: int) -> float:
        done = (
            sa.select(jobs.c.seconds_per_step, jobs.c.width, jobs.c.height)
            .where(
                jobs.c.model_id == model_id,
                jobs.c.status == JobStatus.SUCCEEDED.value,
                jobs.c.seconds_per_step.is_not(None),
            )
            .order_by(jobs.c.finished_at.desc())
            .limit(_SAMPLES)
        )
        same_size = self._conn.execute(done.where(jobs.c.width == width, jobs.c.height == height)).all()
        if same_size:
            return float(statistics.median(float(row.seconds_per_step) for row in same_size))
        any_size = self._conn.execute(done).all()
        if not any_size:
            return DEFAULT_SECONDS_PER_STEP
        pixels = width * height
        # Diffusion cost grows about linearly with pixel count; a size of 0 (unknown) is not scaled.
        scaled = [
            row.seconds_per_step * (pixels / (row.width * row.height) if pixels and row.width * row.height else 1.0)
            for row in any_size
        ]
        return float(statistics.median(scaled))


@dataclass(frozen=True)
class Estimate:
    """Where a job stands: its place in the queue (None unless queued) and whole seconds until it is done."""

    position: int | None
    eta_s: int


def estimate(conn: Connection, job: Job, *, now: datetime) -> Estimate:
    """Queue position and ETA of `job` in one pass; 0 s for a finished job, at least 1 s otherwise."""
    if job.status.is_terminal:
        return Estimate(None, 0)
    speeds = SpeedBook(conn)
    own = speeds.job_seconds(job.model_id, job.width, job.height, job.steps)
    if job.status is JobStatus.RUNNING:
        return Estimate(None, max(1, math.ceil(own * (1.0 - _progress(job.progress_step, job.progress_total)))))
    ahead, ahead_s = _queued_ahead(conn, job, speeds)
    backlog = ahead_s + _running_seconds(conn, speeds)
    live = conn.execute(
        sa.select(sa.func.count())
        .select_from(workers)
        .where(workers.c.last_seen >= to_db_time(now - timedelta(seconds=LIVE_WORKER_S)))
    ).scalar_one()
    return Estimate(ahead + 1, max(1, math.ceil(backlog / max(1, int(live)) + own)))


def _queued_ahead(conn: Connection, job: Job, speeds: SpeedBook) -> tuple[int, float]:
    """How many queued jobs are ahead of `job`, and the seconds they will take."""
    created = to_db_time(job.created_at)
    ahead = sa.or_(jobs.c.created_at < created, sa.and_(jobs.c.created_at == created, jobs.c.id < job.id))
    # Grouped, so a long queue costs one row per model and size, not one per job.
    groups = conn.execute(
        sa.select(
            jobs.c.model_id,
            jobs.c.width,
            jobs.c.height,
            sa.func.count().label("jobs"),
            sa.func.sum(sa.case((jobs.c.steps > 0, jobs.c.steps), else_=1)).label("steps"),
        )
        .where(jobs.c.status == JobStatus.QUEUED.value, ahead)
        .group_by(jobs.c.model_id, jobs.c.width, jobs.c.height)
    ).all()
    count = sum(int(g.jobs) for g in groups)
    return count, sum(speeds.job_seconds(g.model_id, g.width, g.height, int(g.steps)) for g in groups)


def _running_seconds(conn: Connection, speeds: SpeedBook) -> float:
    running = conn.execute(
        sa.select(
            jobs.c.model_id, jobs.c.width, jobs.c.height, jobs.c.steps, jobs.c.progress_step, jobs.c.progress_total
        ).where(jobs.c.status == JobStatus.RUNNING.value)
    ).all()
    return sum(
        speeds.job_seconds(r.model_id, r.width, r.height, r.steps)
        * (1.0 - _progress(r.progress_step, r.progress_total))
        for r in running
    )


def _progress(step: int, total: int) -> float:
    return min(1.0, max(0.0, step / total)) if total > 0 else 0.0
