"""The job store: the one channel between API and workers (submit, claim with leases, results, cancel, ETA, outbox)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sdserver.database import utcnow
from sdserver.errors import JobErrorCode, LeaseLostError, NotFoundError
from sdserver.jobs import Job, JobKind, JobSpec, JobStatus, WebhookStatus, can_transition
from sdserver.jobstore.claims import batch_mates, claimable, pick_head
from sdserver.jobstore.eta import AFFINITY_MAX_WAIT_S, CostMemory, Estimate, estimate
from sdserver.jobstore.outbox import WebhookDelivery, claim_due, enqueue_delivery, record_attempt
from sdserver.jobstore.pg_wakeups import CHANGE_CHANNEL, WORK_CHANNEL, PgWakeups, notify
from sdserver.jobstore.sqlite_wakeups import SqliteChangeWatch
from sdserver.jobstore.tables import dump_json, job_from_row, jobs, row_for_spec, to_db_time, workers
from sdserver.jobstore.workers import (
    WorkerInfo,
    models_held_by_peers,
    note_held_models,
    upsert_worker,
    workers_seen_since,
)

__all__ = ["JobStore", "WebhookDelivery", "WorkerInfo"]


class JobStore:
    """Jobs in SQL, safe for many API and worker processes at once on SQLite (WAL) and PostgreSQL.

    Every status change is a guarded UPDATE (`WHERE status = <current> AND worker_id = <me>`) checked
    against `can_transition`, so a worker whose lease was taken over can never overwrite a newer state.
    """

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = utcnow):
        self._engine = engine
        self._clock = clock
        self._sqlite = engine.dialect.name == "sqlite"
        # Model costs the ETA read lately: fetch polls reuse them for a second or two.
        self._costs = CostMemory()
        self._wakeups: PgWakeups | None = None
        # SQLite cannot push wake-ups across processes: one watcher thread per store polls for commits instead.
        self._sqlite_watch = SqliteChangeWatch(engine) if self._sqlite else None
        if not self._sqlite:
            dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._wakeups = PgWakeups(dsn)

    def close(self) -> None:
        """Stop the wake-up listener or watcher; the engine stays open for its owner to dispose."""
        if self._wakeups is not None:
            self._wakeups.close()
        if self._sqlite_watch is not None:
            self._sqlite_watch.close()

    # --- API side

    def submit(self, spec: JobSpec) -> Job:
        with self._write() as conn:
            job_id = conn.execute(
                sa.insert(jobs).values(**row_for_spec(spec, self._now())).returning(jobs.c.id)
            ).scalar_one()
            self._notify(conn, WORK_CHANNEL)
            return job_from_row(_select_job(conn, job_id))

    def get(self, job_id: int, *, owner_key_id: int | None) -> Job:
        with self._engine.connect() as conn:
            row = _visible(_find_job(conn, job_id), owner_key_id)
        return job_from_row(row)

    def cancel(self, job_id: int, *, owner_key_id: int | None) -> Job:
        with self._write() as conn:
            row = _visible(_find_job(conn, job_id, lock=True), owner_key_id)
            status = JobStatus(row.status)
            if status is JobStatus.QUEUED:
                _move(conn, [job_id], JobStatus.QUEUED, JobStatus.CANCELLED, finished_at=self._now())
            elif status is JobStatus.RUNNING and not row.cancel_requested:
                # The worker sees the flag at its next step (or heartbeat) and stops with mark_cancelled.
                conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value)
                    .values(cancel_requested=True)
                )
            else:
                return job_from_row(row)
            self._notify(conn, CHANGE_CHANNEL, str(job_id))
            return job_from_row(_select_job(conn, job_id))

    def fail_queued_for_model(
        self, model_id: str, kinds: Sequence[JobKind], *, code: JobErrorCode, message: str
    ) -> list[int]:
        """Fail the queued jobs of these kinds that wait for a model that is gone (delete_model): no worker would
        ever claim them. Their webhooks go out like any failure's. Returns their ids."""
        with self._write() as conn:
            rows = conn.execute(
                sa.select(jobs.c.id, jobs.c.webhook_url)
                .where(
                    jobs.c.status == JobStatus.QUEUED.value,
                    jobs.c.model_id == model_id,
                    jobs.c.kind.in_([kind.value for kind in kinds]),
                )
                .with_for_update()
            ).all()
            now = self._now()
            failed: list[int] = []
            for row in rows:
                values: dict[str, Any] = {"error_code": code, "error_message": message}
                if row.webhook_url:
                    values["webhook_status"] = WebhookStatus.PENDING.value
                if _move(conn, [row.id], JobStatus.QUEUED, JobStatus.FAILED, finished_at=now, **values) != 1:
                    continue
                if row.webhook_url:
                    enqueue_delivery(conn, row.id, row.webhook_url, now=now)
                self._notify(conn, CHANGE_CHANNEL, str(row.id))
                failed.append(int(row.id))
            return sorted(failed)

    def count_active(self, owner_key_id: int) -> int:
        query = (
            sa.select(sa.func.count())
            .select_from(jobs)
            .where(jobs.c.owner_key_id == owner_key_id, jobs.c.status.in_(_ACTIVE))
        )
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def active_jobs(self, owner_key_id: int) -> list[Job]:
        """The key's queued and running jobs, oldest first."""
        query = (
            sa.select(jobs).where(jobs.c.owner_key_id == owner_key_id, jobs.c.status.in_(_ACTIVE)).order_by(jobs.c.id)
        )
        with self._engine.connect() as conn:
            return [job_from_row(row) for row in conn.execute(query).all()]

    def estimate(self, job: Job) -> Estimate:
        """Queue position and ETA of `job`, read in one connection."""
        if job.status.is_terminal:
            return Estimate(None, 0)
        with self._engine.connect() as conn:
            return estimate(conn, job, now=self._now(), memory=self._costs)

    def get_with_estimate(self, job_id: int, *, owner_key_id: int | None) -> tuple[Job, Estimate]:
        """`get` and `estimate` in one connection: a fetch poll costs the API one thread hop, not two."""
        with self._engine.connect() as conn:
            job = job_from_row(_visible(_find_job(conn, job_id), owner_key_id))
            if job.status.is_terminal:
                return job, Estimate(None, 0)
            return job, estimate(conn, job, now=self._now(), memory=self._costs)

    def queue_position(self, job: Job) -> int | None:
        return self.estimate(job).position

    def eta_seconds(self, job: Job) -> int:
        return self.estimate(job).eta_s

    # --- worker registry

    def register_worker(
        self, worker_id: str, *, device: str, engines: Sequence[str], max_batch: int = 1, max_models: int = 1
    ) -> None:
        """A worker starts: what it runs, and how it claims (batch size, models kept loaded) for the ETA."""
        now = self._now()
        values = {"device": device, "engines": dump_json(list(engines)), "last_seen": now}
        values |= {"max_batch": max_batch, "max_models": max_models}
        with self._write() as conn:
            upsert_worker(conn, worker_id, values, started_at=now, held_models="[]")

    def worker_heartbeat(self, worker_id: str, *, held_models: Sequence[str]) -> None:
        now = self._now()
        values = {"held_models": dump_json(list(held_models)), "last_seen": now}
        with self._write() as conn:
            # A worker whose row vanished (an operator cleared the table) comes back, so it still counts.
            upsert_worker(conn, worker_id, values, started_at=now, device="", engines="[]")

    def unregister_worker(self, worker_id: str) -> None:
        with self._write() as conn:
            conn.execute(sa.delete(workers).where(workers.c.worker_id == worker_id))

    def live_workers(self, *, within_s: float) -> list[WorkerInfo]:
        with self._engine.connect() as conn:
            return workers_seen_since(conn, self._now() - timedelta(seconds=within_s))

    # --- worker side: claims and leases

    def claim(
        self,
        worker_id: str,
        *,
        kinds: Collection[JobKind] | None = None,
        models: Collection[str] | None = None,
        held_models: Collection[str] = (),
        lease_s: float,
        max_batch: int = 1,
        affinity_max_wait_s: float = AFFINITY_MAX_WAIT_S,
        peers_seen_within_s: float = 30.0,
    ) -> list[Job]:
        if (kinds is not None and not kinds) or (models is not None and not models) or max_batch < 1:
            return []
        now = self._now()
        where = claimable(kinds, models)
        with self._write() as conn:
            peers_hold = models_held_by_peers(conn, worker_id, now - timedelta(seconds=peers_seen_within_s))
            head = pick_head(conn, where, held_models, now - timedelta(seconds=affinity_max_wait_s), peers_hold)
            if head is None:
                return []
            head_id, signature, head_model = head
            # Peers see at once which model this worker is about to load, not only after its next heartbeat.
            note_held_models(conn, worker_id, {*held_models, head_model})
            ids = [head_id]
            if max_batch > 1:
                ids += batch_mates(conn, head_id, signature, max_batch - 1)
            # The worker loads the model first unless it holds it: the ETA of these jobs includes that load.
            return _take(conn, ids, worker_id, now, lease_s, load_expected=head_model not in set(held_models))

    def claim_mates(self, worker_id: str, head_id: int, *, limit: int, lease_s: float) -> list[Job]:
        """Claim up to `limit` more queued jobs that can share a batch with `head_id` (a job this worker runs now),
        oldest first, leased like `claim`'s; none when the head is no longer this worker's."""
        if limit < 1:
            return []
        now = self._now()
        head = sa.select(jobs.c.batch_signature, jobs.c.load_expected).where(
            jobs.c.id == head_id, jobs.c.status == JobStatus.RUNNING.value, jobs.c.worker_id == worker_id
        )
        with self._write() as conn:
            row = conn.execute(head).first()
            if row is None:
                return []
            ids = batch_mates(conn, head_id, str(row.batch_signature), limit)
            # Mates join the head's run: they wait for its load too, if it has one.
            return _take(conn, ids, worker_id, now, lease_s, load_expected=bool(row.load_expected)) if ids else []

    def heartbeat(self, job_ids: Sequence[int], worker_id: str, *, lease_s: float) -> dict[int, bool]:
        if not job_ids:
            return {}
        lease_end = self._now() + timedelta(seconds=lease_s)
        # A lease that ran out but was not swept yet is still this worker's: renewing it is correct.
        renew = (
            sa.update(jobs)
            .where(
                jobs.c.id.in_(list(job_ids)),
                jobs.c.status == JobStatus.RUNNING.value,
                jobs.c.worker_id == worker_id,
            )
            .values(lease_expires_at=lease_end)
            .returning(jobs.c.id, jobs.c.cancel_requested)
        )
        with self._write() as conn:
            rows = conn.execute(renew).all()
        return {int(row.id): bool(row.cancel_requested) for row in rows}

    def report_progress(self, job_id: int, worker_id: str, *, step: int, total: int) -> bool:
        query = (
            sa.update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value, jobs.c.worker_id == worker_id)
            .values(progress_step=step, progress_total=total, progress_at=self._now())
            .returning(jobs.c.cancel_requested)
        )
        with self._write() as conn:
            flag = conn.execute(query).scalar_one_or_none()
        if flag is None:
            raise _lease_lost(job_id, worker_id)
        return bool(flag)

    def complete(
        self,
        job_id: int,
        worker_id: str,
        *,
        result: dict[str, Any],
        seconds_per_step: float | None,
        run_seconds: float | None = None,
        load_seconds: float | None = None,
    ) -> Job:
        """Success; the measured seconds (work, and the model load when there was one) feed later ETAs."""
        timing = {"seconds_per_step": seconds_per_step, "run_seconds": run_seconds, "load_seconds": load_seconds}
        self._costs.forget()  # this process's own estimates see the new measurement at once
        with self._write() as conn:
            row = _owned(conn, job_id, worker_id)
            self._finish(conn, row, JobStatus.SUCCEEDED, result=dump_json(result), **timing)
            return job_from_row(_select_job(conn, job_id))

    def fail(self, job_id: int, worker_id: str, *, code: JobErrorCode, message: str) -> Job:
        with self._write() as conn:
            row = _owned(conn, job_id, worker_id)
            self._finish(conn, row, JobStatus.FAILED, error_code=code, error_message=message)
            return job_from_row(_select_job(conn, job_id))

    def mark_cancelled(self, job_id: int, worker_id: str) -> Job:
        with self._write() as conn:
            row = _owned(conn, job_id, worker_id)
            self._finish(conn, row, JobStatus.CANCELLED)
            return job_from_row(_select_job(conn, job_id))

    def release(self, job_id: int, worker_id: str) -> None:
        """Graceful stop: the job goes back to the queue and this attempt is not counted.

        A job this worker no longer owns is left alone (someone else has it now), without an error: the
        worker is stopping either way.
        """
        with self._write() as conn:
            row = _find_job(conn, job_id, lock=True)
            if row is None or row.status != JobStatus.RUNNING.value or row.worker_id != worker_id:
                return
            if row.cancel_requested:
                self._finish(conn, row, JobStatus.CANCELLED)
                return
            uncounted = sa.case((jobs.c.attempts > 0, jobs.c.attempts - 1), else_=0)
            _move(
                conn,
                [job_id],
                JobStatus.RUNNING,
                JobStatus.QUEUED,
                owner=worker_id,
                attempts=uncounted,
                **_REQUEUE_VALUES,
            )
            self._notify(conn, WORK_CHANNEL)
            self._notify(conn, CHANGE_CHANNEL, str(job_id))

    def requeue_expired(self) -> int:
        """Settle running jobs whose lease passed; returns how many were re-queued, failed or cancelled."""
        now = self._now()
        expired = (
            sa.select(jobs)
            .where(jobs.c.status == JobStatus.RUNNING.value, jobs.c.lease_expires_at < now)
            .order_by(jobs.c.id)
            .with_for_update(skip_locked=True)
        )
        with self._write() as conn:
            rows = conn.execute(expired).all()
            for row in rows:
                self._settle_expired(conn, row)
        return len(rows)

    def _settle_expired(self, conn: Connection, row: sa.Row[Any]) -> None:
        if row.cancel_requested:
            # The client asked to cancel and the worker died before it could: don't run it again.
            self._finish(conn, row, JobStatus.CANCELLED)
        elif row.attempts < row.max_attempts:
            _move(conn, [row.id], JobStatus.RUNNING, JobStatus.QUEUED, owner=row.worker_id, **_REQUEUE_VALUES)
            self._notify(conn, WORK_CHANNEL)
            self._notify(conn, CHANGE_CHANNEL, str(row.id))
        else:
            times = "time" if row.attempts == 1 else "times"
            message = f"The worker running this job stopped responding {row.attempts} {times}; giving up"
            self._finish(conn, row, JobStatus.FAILED, error_code=JobErrorCode.WORKER_LOST, error_message=message)

    def _finish(self, conn: Connection, row: sa.Row[Any], status: JobStatus, **values: Any) -> None:
        """running -> a terminal state for the row's worker, with the webhook queued in the same transaction."""
        now = self._now()
        send = status in (JobStatus.SUCCEEDED, JobStatus.FAILED) and bool(row.webhook_url)
        if send:
            values["webhook_status"] = WebhookStatus.PENDING.value
        moved = _move(
            conn,
            [row.id],
            JobStatus.RUNNING,
            status,
            owner=row.worker_id,
            finished_at=now,
            lease_expires_at=None,
            **values,
        )
        if moved != 1:
            raise _lease_lost(row.id, row.worker_id)
        if send:
            enqueue_delivery(conn, row.id, row.webhook_url, now=now)
        self._notify(conn, CHANGE_CHANNEL, str(row.id))

    # --- webhook outbox

    def claim_due_webhooks(self, *, limit: int, lease_s: float) -> list[WebhookDelivery]:
        if limit < 1:
            return []
        with self._write() as conn:
            return claim_due(conn, now=self._now(), limit=limit, lease_s=lease_s)

    def record_webhook_attempt(
        self,
        delivery_id: int,
        *,
        delivered: bool,
        status_code: int | None,
        error: str | None,
        next_attempt_at: datetime | None,
    ) -> None:
        with self._write() as conn:
            record_attempt(
                conn,
                delivery_id,
                now=self._now(),
                delivered=delivered,
                status_code=status_code,
                error=error,
                next_attempt_at=next_attempt_at,
            )

    # --- wake-ups

    def wait_for_work(self, timeout_s: float) -> None:
        if self._wakeups is not None:
            self._wakeups.wait_for_work(timeout_s)
        elif self._sqlite_watch is not None:
            self._sqlite_watch.wait(timeout_s)

    def wait_for_job_change(self, job_id: int, timeout_s: float) -> None:
        """Return when `job_id` may have changed (on SQLite: when anything was committed), or after the timeout."""
        if self._wakeups is not None:
            self._wakeups.wait_for_job_change(job_id, timeout_s)
        elif self._sqlite_watch is not None:
            self._sqlite_watch.wait(timeout_s)

    # --- plumbing

    def _now(self) -> datetime:
        return to_db_time(self._clock())

    def _notify(self, conn: Connection, channel: str, payload: str = "") -> None:
        if not self._sqlite:
            notify(conn, channel, payload)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction. On SQLite it takes the database write lock first (BEGIN IMMEDIATE).

        pysqlite would otherwise begin on the first write, after our reads; if another process committed in
        between, SQLite refuses the upgrade at once ("database is locked") instead of waiting. Taking the lock
        up front also serialises claims across processes.
        """
        if not self._sqlite:
            with self._engine.begin() as conn:
                yield conn
            return
        with self._engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                driver = conn.connection.driver_connection
                if isinstance(driver, sqlite3.Connection) and driver.in_transaction:
                    conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT")


_ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)

_REQUEUE_VALUES: dict[str, Any] = {
    "worker_id": None,
    "lease_expires_at": None,
    "progress_step": 0,
    "progress_total": 0,
}


def _take(
    conn: Connection, ids: list[int], worker_id: str, now: datetime, lease_s: float, *, load_expected: bool
) -> list[Job]:
    """Move the locked queued jobs `ids` to running under `worker_id`; returns them in the order of `ids`."""
    _move(
        conn,
        ids,
        JobStatus.QUEUED,
        JobStatus.RUNNING,
        worker_id=worker_id,
        lease_expires_at=now + timedelta(seconds=lease_s),
        attempts=jobs.c.attempts + 1,
        started_at=sa.func.coalesce(jobs.c.started_at, sa.literal(now, jobs.c.started_at.type)),
        progress_step=0,
        progress_total=0,
        progress_at=None,
        load_expected=load_expected,
        cancel_requested=False,
    )
    rows = conn.execute(
        sa.select(jobs).where(
            jobs.c.id.in_(ids), jobs.c.status == JobStatus.RUNNING.value, jobs.c.worker_id == worker_id
        )
    ).all()
    rank = {job_id: index for index, job_id in enumerate(ids)}
    return sorted((job_from_row(row) for row in rows), key=lambda job: rank[job.id])


def _move(
    conn: Connection, ids: Sequence[int], current: JobStatus, new: JobStatus, *, owner: str | None = None, **values: Any
) -> int:
    """Guarded status change: only rows still in `current` (and held by `owner`, if given) move."""
    if not can_transition(current, new):
        raise ValueError(f"a job cannot go from {current.value} to {new.value}")
    query = sa.update(jobs).where(jobs.c.id.in_(list(ids)), jobs.c.status == current.value)
    if owner is not None:
        query = query.where(jobs.c.worker_id == owner)
    return int(conn.execute(query.values(status=new.value, **values)).rowcount)


def _find_job(conn: Connection, job_id: int, *, lock: bool = False) -> sa.Row[Any] | None:
    query = sa.select(jobs).where(jobs.c.id == job_id)
    return conn.execute(query.with_for_update() if lock else query).first()


def _select_job(conn: Connection, job_id: int) -> sa.Row[Any]:
    row = _find_job(conn, job_id)
    if row is None:
        raise NotFoundError()
    return row


def _visible(row: sa.Row[Any] | None, owner_key_id: int | None) -> sa.Row[Any]:
    # A foreign id answers exactly like a missing one, so ids reveal nothing about other keys' jobs.
    if row is None or (owner_key_id is not None and row.owner_key_id != owner_key_id):
        raise NotFoundError()
    return row


def _owned(conn: Connection, job_id: int, worker_id: str) -> sa.Row[Any]:
    row = _find_job(conn, job_id, lock=True)
    if row is None or row.status != JobStatus.RUNNING.value or row.worker_id != worker_id:
        raise _lease_lost(job_id, worker_id)
    return row


def _lease_lost(job_id: int, worker_id: str) -> LeaseLostError:
    return LeaseLostError(f"Job {job_id} is no longer held by worker {worker_id}")
