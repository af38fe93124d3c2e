"""ETA of a queued or running job: measured cost per model (fixed part + seconds per megapixel-step), the
model's load time when no live worker holds it, and progress that moves on within a long step (docs/eta.md)."""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sdserver.jobs import Job, JobStatus
from sdserver.jobstore.tables import jobs, load_strings, stored_time, to_db_time, workers

# Fit over this many recent runs of a model: steady against one slow outlier, quick to follow a change.
_SAMPLES = 20
_LOAD_SAMPLES = 5
# With no measurement at all on this server: one second per 512×512 step, a ten-second model load.
DEFAULT_SECONDS_PER_UNIT = 1.0
DEFAULT_LOAD_S = 10.0
# A worker that has not heartbeaten for this long no longer counts towards throughput.
LIVE_WORKER_S = 60.0
# The ETA plays at most this many queued jobs through as the workers would claim them (one row each).
_PLAYED = 300
# The claims' starvation guard (JobStore.claim's `affinity_max_wait_s`).
AFFINITY_MAX_WAIT_S = 30.0
# One unit of work: one step at 512×512 (upscales and other step-less jobs: one pass over their pixels).
_UNIT_PIXELS = 512 * 512


def work_units(width: int, height: int, steps: int) -> float:
    """The job's size in 512×512-steps: diffusion cost grows about linearly with pixels and with steps."""
    pixels = width * height if width > 0 and height > 0 else _UNIT_PIXELS
    return pixels / _UNIT_PIXELS * max(steps, 1)


@dataclass(frozen=True)
class Cost:
    """Seconds of a run of one model: `fixed` per job (prompt encoding, decoding, PNG) + `per_unit` × work."""

    fixed: float
    per_unit: float

    def seconds(self, units: float, jobs: int = 1) -> float:
        return self.fixed * jobs + self.per_unit * units


def fit_cost(samples: Iterable[tuple[float, float]]) -> Cost | None:
    """Least-squares `fixed + per_unit × units` through (units, seconds) samples; None without samples.

    With one size only, the line through the origin (its median slope); neither part is ever negative.
    """
    points = [(units, seconds) for units, seconds in samples if units > 0 and seconds >= 0]
    if not points:
        return None
    slope_only = Cost(0.0, statistics.median(seconds / units for units, seconds in points))
    if len({units for units, _ in points}) < 2:
        return slope_only
    mean_u = statistics.fmean(units for units, _ in points)
    mean_s = statistics.fmean(seconds for _, seconds in points)
    spread = sum((units - mean_u) ** 2 for units, _ in points)
    per_unit = sum((units - mean_u) * (seconds - mean_s) for units, seconds in points) / spread
    fixed = mean_s - per_unit * mean_u
    if per_unit <= 0:
        return Cost(mean_s, 0.0)
    if fixed < 0:
        return slope_only
    return Cost(fixed, per_unit)


class CostMemory:
    """What `CostBook`s of one process learnt, kept `ttl_s` seconds: a fetch poll then reads the job, the queue and
    the workers, not the fit of every model again (costs move with finished jobs, seconds apart). `forget()` when
    this process itself finished a job."""

    def __init__(self, ttl_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl, self._clock = ttl_s, clock
        self._entries: dict[tuple[str, str], tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def recall(self, kind: str, name: str, compute: Callable[[], Any]) -> Any:
        now = self._clock()
        with self._lock:
            entry = self._entries.get((kind, name))
        if entry is not None and now - entry[0] < self._ttl:
            return entry[1]
        value = compute()
        with self._lock:
            self._entries[(kind, name)] = (now, value)
        return value

    def forget(self) -> None:
        with self._lock:
            self._entries.clear()


class CostBook:
    """Costs and load times by model for one estimate (one query per model asked about, or none when `memory`
    still holds it)."""

    def __init__(self, conn: Connection, memory: CostMemory | None = None):
        self._conn = conn
        self._memory = memory or CostMemory(ttl_s=0.0)
        self._costs: dict[str, Cost] = {}
        self._loads: dict[str, float] = {}
        self._machine: Cost | None = None

    def cost(self, model_id: str) -> Cost:
        if model_id not in self._costs:
            fit = self._memory.recall("cost", model_id, lambda: self._fit(jobs.c.model_id == model_id))
            self._costs[model_id] = fit or self.machine()
        return self._costs[model_id]

    def machine(self) -> Cost:
        """Any model's recent runs: this machine's speed, for a model that never ran here."""
        if self._machine is None:
            fit = self._memory.recall("cost", "", lambda: self._fit(sa.true()))
            self._machine = fit or Cost(0.0, DEFAULT_SECONDS_PER_UNIT)
        return self._machine

    def load_seconds(self, model_id: str) -> float:
        if model_id not in self._loads:
            self._loads[model_id] = self._memory.recall("load", model_id, lambda: self._measure_load(model_id))
        return self._loads[model_id]

    def _measure_load(self, model_id: str) -> float:
        loaded = jobs.c.load_seconds.is_not(None)
        recent = self._recent(jobs.c.load_seconds, loaded, jobs.c.model_id == model_id, limit=_LOAD_SAMPLES)
        if not recent:
            recent = self._recent(jobs.c.load_seconds, loaded, limit=_LOAD_SAMPLES)
        return statistics.median(recent) if recent else DEFAULT_LOAD_S

    def job_seconds(self, model_id: str, width: int, height: int, steps: int) -> float:
        """Seconds of work of one such job, without any model load."""
        return self.cost(model_id).seconds(work_units(width, height, steps))

    def _fit(self, which: sa.ColumnElement[bool]) -> Cost | None:
        done = jobs.c.status == JobStatus.SUCCEEDED.value
        query = (
            sa.select(jobs.c.width, jobs.c.height, jobs.c.steps, jobs.c.run_seconds, jobs.c.seconds_per_step)
            .where(which, done, sa.or_(jobs.c.run_seconds.is_not(None), jobs.c.seconds_per_step.is_not(None)))
            .order_by(jobs.c.finished_at.desc())
            .limit(_SAMPLES)
        )
        samples = []
        for row in self._conn.execute(query):
            # Rows from before run_seconds existed carry only seconds per step (load included): still a hint.
            seconds = row.run_seconds if row.run_seconds is not None else row.seconds_per_step * max(row.steps, 1)
            samples.append((work_units(row.width, row.height, row.steps), float(seconds)))
        return fit_cost(samples)

    def _recent(self, column: sa.ColumnElement[float], *where: sa.ColumnElement[bool], limit: int) -> list[float]:
        query = sa.select(column).where(*where).order_by(jobs.c.finished_at.desc()).limit(limit)
        return [float(value) for value in self._conn.execute(query).scalars()]


@dataclass(frozen=True)
class Estimate:
    """Where a job stands: its place in the queue (None unless queued) and whole seconds until it is done."""

    position: int | None
    eta_s: int


@dataclass(frozen=True)
class _Workers:
    live: int
    held: frozenset[str]
    # The largest batch a live worker runs (1: no batching), and how many models one keeps loaded.
    max_batch: int = 1
    max_models: int = 1


def estimate(conn: Connection, job: Job, *, now: datetime, memory: CostMemory | None = None) -> Estimate:
    """Queue position and ETA of `job` in one pass; 0 s for a finished job, at least 1 s otherwise."""
    if job.status.is_terminal:
        return Estimate(None, 0)
    book = CostBook(conn, memory)
    if job.status is JobStatus.RUNNING:
        return Estimate(None, _whole_seconds(_running_left(conn, book, job.id, now)))
    fleet = _live_workers(conn, now)
    running_s, running_models = _running(conn, book, now)
    # A model a running job uses is loaded (or loading) on its worker already.
    held = fleet.held | running_models
    played = _played_queue(conn, job, book, replace(fleet, held=held), now=now, start_s=running_s / max(1, fleet.live))
    if played is not None:
        ahead, before_s, own = played
        return Estimate(ahead + 1, _whole_seconds((before_s + running_s) / max(1, fleet.live) + own))
    ahead, ahead_s, loading = _queued_ahead(conn, job, book, held)
    backlog = ahead_s + running_s
    own = book.job_seconds(job.model_id, job.width, job.height, job.steps)
    if job.model_id not in held and job.model_id not in loading:
        own += book.load_seconds(job.model_id)
    return Estimate(ahead + 1, _whole_seconds(backlog / max(1, fleet.live) + own))


def queue_seconds(conn: Connection, now: datetime, live_workers: int) -> int:
    """Seconds until everything queued or running now is done, spread over `live_workers`."""
    book = CostBook(conn)
    running_s, running_models = _running(conn, book, now)
    held = _live_workers(conn, now).held | running_models
    queued = conn.execute(_queued_groups(jobs.c.status == JobStatus.QUEUED.value)).all()
    total = _groups_seconds(book, queued, held)[0] + running_s
    return math.ceil(total / max(1, live_workers))


def _whole_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def _live_workers(conn: Connection, now: datetime) -> _Workers:
    since = to_db_time(now - timedelta(seconds=LIVE_WORKER_S))
    query = sa.select(workers.c.held_models, workers.c.max_batch, workers.c.max_models)
    rows = conn.execute(query.where(workers.c.last_seen >= since)).all()
    held = frozenset(model for row in rows for model in load_strings(row.held_models))
    max_batch = max((int(row.max_batch or 1) for row in rows), default=1)
    return _Workers(len(rows), held, max_batch, max((int(row.max_models or 1) for row in rows), default=1))


def _queued_groups(*where: sa.ColumnElement[bool]) -> sa.Select[Any]:
    # Grouped, so a long queue costs one row per model, size and step count, not one per job.
    return (
        sa.select(jobs.c.model_id, jobs.c.width, jobs.c.height, jobs.c.steps, sa.func.count().label("jobs"))
        .where(*where)
        .group_by(jobs.c.model_id, jobs.c.width, jobs.c.height, jobs.c.steps)
    )


def _groups_seconds(book: CostBook, groups: Iterable[sa.Row[Any]], held: frozenset[str]) -> tuple[float, set[str]]:
    """Seconds of the grouped jobs plus one load for each model no live worker holds; and those models."""
    seconds, loading = 0.0, set()
    for group in groups:
        model_id, width, height, steps, count = group.model_id, group.width, group.height, group.steps, group.jobs
        seconds += book.cost(model_id).seconds(work_units(width, height, steps) * count, jobs=count)
        if model_id not in held and model_id not in loading:
            loading.add(model_id)
            seconds += book.load_seconds(model_id)
    return seconds, loading


def _queued_ahead(conn: Connection, job: Job, book: CostBook, held: frozenset[str]) -> tuple[int, float, set[str]]:
    """How many queued jobs are ahead of `job`, the seconds they take, and the models they load."""
    created = to_db_time(job.created_at)
    ahead = sa.or_(jobs.c.created_at < created, sa.and_(jobs.c.created_at == created, jobs.c.id < job.id))
    groups = conn.execute(_queued_groups(jobs.c.status == JobStatus.QUEUED.value, ahead)).all()
    seconds, loading = _groups_seconds(book, groups, held)
    return sum(int(group.jobs) for group in groups), seconds, loading


def _played_queue(
    conn: Connection, job: Job, book: CostBook, fleet: _Workers, *, now: datetime, start_s: float
) -> tuple[int, float, float] | None:
    """The queue played as the workers will claim it (jobstore.claims): a job waiting past the affinity limit
    first, else the oldest job of a model a worker holds, else the oldest job, each with up to `max_batch - 1`
    queued jobs of its batch signature; a model not held is loaded first (and pushes out the least recent one
    beyond the workers' model capacity). Starts `start_s` from `now` (when the running jobs are done).

    Returns the jobs ahead of `job` by age (its queue position − 1), the seconds of the batches run before
    `job`'s and its own batch's seconds (load included); None when `job` is not among the oldest `_PLAYED`
    queued jobs (the grouped estimate answers then).
    """
    rows = conn.execute(
        sa.select(
            jobs.c.id,
            jobs.c.model_id,
            jobs.c.width,
            jobs.c.height,
            jobs.c.steps,
            jobs.c.batch_signature,
            jobs.c.created_at,
        )
        .where(jobs.c.status == JobStatus.QUEUED.value)
        .order_by(jobs.c.created_at, jobs.c.id)
        .limit(_PLAYED)
    ).all()
    index = next((at for at, row in enumerate(rows) if row.id == job.id), None)
    if index is None:
        return None
    by_model: dict[str, deque[Any]] = {}
    by_signature: dict[str, deque[Any]] = {}
    for row in rows:
        by_model.setdefault(row.model_id, deque()).append(row)
        by_signature.setdefault(row.batch_signature, deque()).append(row)
    taken: set[int] = set()
    oldest = deque(rows)
    loaded = list(fleet.held)  # least recently used first
    # What the workers hold now fits in them, whatever they said at start.
    capacity = max(fleet.max_models, len(loaded))
    live = max(1, fleet.live)
    before = 0.0

    def first_waiting(queue: deque[Any]) -> Any:
        while queue and queue[0].id in taken:
            queue.popleft()
        return queue[0] if queue else None

    while (head := first_waiting(oldest)) is not None:
        starved_before = now + timedelta(seconds=start_s + before / live - AFFINITY_MAX_WAIT_S)
        if loaded and stored_time(head.created_at) > starved_before:
            held_heads = [first_waiting(by_model.get(model, deque())) for model in loaded]
            waiting = [row for row in held_heads if row is not None]
            if waiting:
                head = min(waiting, key=lambda row: (stored_time(row.created_at), row.id))
        mates = by_signature[head.batch_signature]
        batch = [head]
        for row in mates:
            if len(batch) >= fleet.max_batch:
                break
            if row.id not in taken and row.id != head.id:
                batch.append(row)
        taken.update(row.id for row in batch)
        units = sum(work_units(row.width, row.height, row.steps) for row in batch)
        seconds = book.cost(head.model_id).seconds(units, jobs=len(batch))
        if head.model_id in loaded:
            loaded.remove(head.model_id)
        else:
            seconds += book.load_seconds(head.model_id)
        loaded.append(head.model_id)
        del loaded[: max(0, len(loaded) - capacity)]
        if any(row.id == job.id for row in batch):
            return index, before, seconds
        before += seconds
    return None


_RUNNING_COLUMNS = (
    jobs.c.model_id,
    jobs.c.width,
    jobs.c.height,
    jobs.c.steps,
    jobs.c.progress_step,
    jobs.c.progress_total,
    jobs.c.progress_at,
    jobs.c.started_at,
    jobs.c.load_expected,
)


def _running(conn: Connection, book: CostBook, now: datetime) -> tuple[float, frozenset[str]]:
    """Seconds the running jobs still need, and their models."""
    rows = conn.execute(sa.select(*_RUNNING_COLUMNS).where(jobs.c.status == JobStatus.RUNNING.value)).all()
    return sum((_left(book, row, now) for row in rows), 0.0), frozenset(str(row.model_id) for row in rows)


def _running_left(conn: Connection, book: CostBook, job_id: int, now: datetime) -> float:
    row = conn.execute(sa.select(*_RUNNING_COLUMNS).where(jobs.c.id == job_id)).first()
    return 0.0 if row is None else _left(book, row, now)


def _left(book: CostBook, row: Any, now: datetime) -> float:
    """Seconds a running job still needs: before its first step, the expected total less the time it has run;
    after, the steps left at the measured rate, less the part of the current step already spent."""
    cost = book.cost(row.model_id)
    work = cost.per_unit * work_units(row.width, row.height, row.steps)
    steps = row.progress_total if row.progress_total > 0 else max(row.steps, 1)
    if row.progress_step <= 0 or row.progress_at is None:
        expected = cost.fixed + work + (book.load_seconds(row.model_id) if row.load_expected else 0.0)
        ran = (now - stored_time(row.started_at)).total_seconds() if row.started_at is not None else 0.0
        # Never 0 while it runs: a job late against its estimate has at least one more step to go.
        return float(max(expected - ran, work / steps))
    per_step = work / steps
    in_step = min((now - stored_time(row.progress_at)).total_seconds(), per_step)
    return float(max(0.0, (steps - min(row.progress_step, steps)) * per_step - max(0.0, in_step)) + cost.fixed)
