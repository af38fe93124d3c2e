"""Job store behaviour on SQLite and on a real PostgreSQL server: lifecycle, leases, claims, ETA, outbox, wake-ups."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sdserver.database import create_db_engine
from sdserver.errors import LeaseLostError, NotFoundError
from sdserver.job_params import FakeParams, GenerationParams, JobReply
from sdserver.jobs import Job, JobKind, JobSpec, JobStatus, WebhookStatus, batch_signature
from sdserver.jobstore.eta import DEFAULT_LOAD_S
from sdserver.jobstore.store import JobStore
from sdserver.jobstore.tables import job_webhooks, jobs, workers

LEASE = 30.0


class FakeClock:
    """A clock the test moves by hand; shared by every store in a test so leases expire on demand."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Db:
    """One database for a test, and the stores opened on it (each with its own engine, like a process)."""

    url: str
    dialect: str
    clock: FakeClock
    _opened: list[tuple[JobStore, Engine]] = field(default_factory=list)

    def store(self, *, real_clock: bool = False) -> JobStore:
        engine = create_db_engine(self.url)
        store = JobStore(engine) if real_clock else JobStore(engine, clock=self.clock)
        self._opened.append((store, engine))
        return store

    def close(self) -> None:
        for store, engine in self._opened:
            store.close()
            engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
        engine = create_db_engine(url)
        with engine.begin() as conn:
            for table in (job_webhooks, jobs, workers):
                conn.execute(sa.delete(table))
        engine.dispose()
    handle = Db(url, request.param, FakeClock())
    yield handle
    handle.close()


@pytest.fixture
def store(db: Db) -> JobStore:
    return db.store()


def make_spec(**overrides: Any) -> JobSpec:
    values: dict[str, Any] = {
        "owner_key_id": 1,
        "kind": JobKind.TEXT2IMG,
        "model_id": "model-a",
        "params": FakeParams(prompt="a lighthouse"),
        "output_keys": ("outputs/one.png",),
        "future_links": ("http://sd.test/files/outputs/one.png",),
        "width": 512,
        "height": 512,
        "steps": 10,
        "scheduler": "DPMSolverMultistepScheduler",
    }
    values.update(overrides)
    return JobSpec(**values)


def run_to_success(store: JobStore, job: Job, worker: str = "w-done", sps: float | None = None) -> Job:
    claimed = store.claim(worker, models=[job.model_id], lease_s=LEASE)
    assert [c.id for c in claimed] == [job.id]
    return store.complete(job.id, worker, result={"seed": 1}, seconds_per_step=sps)


# --- submit, get, count


def test_submit_and_get_keep_every_field(store: JobStore, db: Db) -> None:
    params = GenerationParams(prompt="ünïcode ☃", seed=7, loras=(("a", 0.5),), init_image_key="uploads/i.png")
    reply = JobReply(
        fetch_prefix="/api/v3",
        meta={"prompt": "ünïcode ☃", "nested": {"list": [1, 2.5, None, True], "empty": {}}},
        base64=True,
        single_output=True,
    )
    spec = make_spec(
        params=params,
        reply=reply,
        output_keys=("k/3.png", "k/1.png", "k/2.png"),
        future_links=("http://x/3", "http://x/1", "http://x/2"),
        width=768,
        height=640,
        steps=25,
        webhook_url="https://hooks.test/in",
        track_id=42,
        max_attempts=5,
    )
    job = store.submit(spec)
    assert job == store.get(job.id, owner_key_id=1)
    assert (job.params, job.reply, job.output_keys, job.future_links) == (
        params,
        reply,
        spec.output_keys,
        spec.future_links,
    )
    assert (job.width, job.height, job.steps, job.scheduler) == (768, 640, 25, spec.scheduler)
    assert (job.status, job.attempts, job.max_attempts) == (JobStatus.QUEUED, 0, 5)
    assert job.track_id == 42 and isinstance(job.track_id, int)
    assert job.webhook_url == "https://hooks.test/in" and job.webhook_status is WebhookStatus.NONE
    assert job.created_at == db.clock.now and job.created_at.tzinfo is not None
    assert job.worker_id is None and job.started_at is None and job.result == {}

    as_text = store.get(store.submit(make_spec(track_id="42")).id, owner_key_id=None)
    assert as_text.track_id == "42"
    assert store.get(store.submit(make_spec()).id, owner_key_id=None).track_id is None


def test_foreign_or_unknown_id_is_not_found(store: JobStore) -> None:
    job = store.submit(make_spec(owner_key_id=1))
    for owner, job_id in [(2, job.id), (1, job.id + 1000)]:
        with pytest.raises(NotFoundError) as info:
            store.get(job_id, owner_key_id=owner)
        assert info.value.message == "Request not found"
    assert store.get(job.id, owner_key_id=None).id == job.id


def test_count_active_counts_queued_and_running_of_that_key(store: JobStore) -> None:
    first = store.submit(make_spec(owner_key_id=1))
    store.submit(make_spec(owner_key_id=1))
    store.submit(make_spec(owner_key_id=2))
    assert store.count_active(1) == 2
    store.claim("w1", lease_s=LEASE)
    assert store.count_active(1) == 2
    store.complete(first.id, "w1", result={}, seconds_per_step=None)
    assert (store.count_active(1), store.count_active(2), store.count_active(3)) == (1, 1, 0)


def test_active_jobs_lists_only_that_keys_queued_and_running_jobs_oldest_first(store: JobStore) -> None:
    first, second = store.submit(make_spec(owner_key_id=1)), store.submit(make_spec(owner_key_id=1))
    store.submit(make_spec(owner_key_id=2))
    done = store.submit(make_spec(owner_key_id=1))
    store.cancel(done.id, owner_key_id=1)
    store.claim("w1", lease_s=LEASE)
    listed = store.active_jobs(1)
    assert [job.id for job in listed] == [first.id, second.id]
    assert listed[0].status is JobStatus.RUNNING and store.active_jobs(3) == []


# --- racing claims


def race(count: int, target: Callable[[int], None]) -> None:
    """Run target(0..count-1) in threads released together; re-raise the first error any of them hit."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            target(index)
        except BaseException as error:  # handed to the test thread below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    if errors:
        raise errors[0]


def _claim_until_empty(store: JobStore, worker: str, max_batch: int) -> list[int]:
    got: list[int] = []
    while batch := store.claim(worker, lease_s=LEASE, max_batch=max_batch):
        # Real workers spend time on each job between claims; without it, on SQLite the claimer that holds
        # the write lock re-takes it before the others' busy-wait retries come round, and the race is moot.
        time.sleep(0.005)
        for job in batch:
            store.complete(job.id, worker, result={"by": worker}, seconds_per_step=0.1)
            got.append(job.id)
    return got


def _submit_many(store: JobStore, count: int) -> list[int]:
    # Two signatures interleaved, so batch claims compete for partly overlapping sets.
    return [store.submit(make_spec(steps=10 + index % 2)).id for index in range(count)]


def test_racing_threads_claim_each_job_once(db: Db) -> None:
    ids = _submit_many(db.store(real_clock=True), 60)
    stores = [db.store(real_clock=True) for _ in range(4)]
    results: dict[str, list[int]] = {}

    def claimer(index: int) -> None:
        results[f"w{index}"] = _claim_until_empty(stores[index], f"w{index}", max_batch=1 + index % 3)

    race(len(stores), claimer)
    claimed = [job_id for got in results.values() for job_id in got]
    assert sorted(claimed) == sorted(ids)
    assert sum(1 for got in results.values() if got) >= 2, results
    done = [stores[0].get(job_id, owner_key_id=None) for job_id in ids]
    assert all(job.status is JobStatus.SUCCEEDED and job.attempts == 1 for job in done)
    assert all(job.result == {"by": job.worker_id} for job in done)


def _claim_in_child(url: str, worker: str, barrier: Any, results: Any) -> None:
    engine = create_db_engine(url)
    store = JobStore(engine)
    barrier.wait(timeout=60)
    results.put((worker, _claim_until_empty(store, worker, max_batch=2)))
    store.close()
    engine.dispose()


def test_racing_processes_claim_each_job_once(db: Db) -> None:
    ids = _submit_many(db.store(real_clock=True), 60)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    results = ctx.Queue()
    children = [ctx.Process(target=_claim_in_child, args=(db.url, f"p{n}", barrier, results)) for n in range(3)]
    for child in children:
        child.start()
    got = dict(results.get(timeout=90) for _ in children)
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0
    claimed = [job_id for ids_of_one in got.values() for job_id in ids_of_one]
    assert sorted(claimed) == sorted(ids)
    assert sum(1 for ids_of_one in got.values() if ids_of_one) >= 2, got


def test_sqlite_claim_takes_the_write_lock_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "lock.db"
    engine = create_db_engine(f"sqlite:///{path}")
    store = JobStore(engine)
    first, second = store.submit(make_spec()), store.submit(make_spec())
    other = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("UPDATE jobs SET status = 'running', worker_id = 'other' WHERE id = ?", (first.id,))
    timer = threading.Timer(0.4, other.execute, args=("COMMIT",))
    timer.start()
    started = time.monotonic()
    # A claim that read before locking would pick `first`, then fail on its stale snapshot once `other` commits.
    claimed = store.claim("w1", lease_s=LEASE)
    assert time.monotonic() - started >= 0.3
    assert [job.id for job in claimed] == [second.id]
    timer.join()
    other.close()
    engine.dispose()


def test_postgres_claim_skips_rows_locked_by_another_transaction(postgres_url: str) -> None:
    clean = create_db_engine(postgres_url)
    with clean.begin() as conn:  # jobs other tests left queued would be claimed first
        for table in (job_webhooks, jobs, workers):
            conn.execute(sa.delete(table))
    clean.dispose()
    db = Db(postgres_url, "postgresql", FakeClock())
    try:
        store = db.store()
        first, second = store.submit(make_spec()), store.submit(make_spec())
        dsn = sa.make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(dsn) as other:
            other.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (first.id,))
            started = time.monotonic()
            claimed = store.claim("w1", lease_s=LEASE)
            assert time.monotonic() - started < 1.0
            assert [job.id for job in claimed] == [second.id]
            other.rollback()
        assert [job.id for job in store.claim("w2", lease_s=LEASE)] == [first.id]
    finally:
        db.close()


# --- leases


def test_expired_lease_goes_back_to_the_queue_and_the_old_worker_loses_it(store: JobStore, db: Db) -> None:
    job = store.submit(make_spec())
    [first_run] = store.claim("w-old", lease_s=10)
    assert first_run.lease_expires_at == db.clock.now + timedelta(seconds=10)
    store.report_progress(job.id, "w-old", step=3, total=10)
    db.clock.advance(5)
    assert store.requeue_expired() == 0
    db.clock.advance(6)
    assert store.requeue_expired() == 1
    requeued = store.get(job.id, owner_key_id=None)
    assert (requeued.status, requeued.attempts, requeued.worker_id) == (JobStatus.QUEUED, 1, None)
    assert (requeued.progress_step, requeued.lease_expires_at) == (0, None)

    for stale in (
        lambda: store.complete(job.id, "w-old", result={"stale": True}, seconds_per_step=1.0),
        lambda: store.fail(job.id, "w-old", code="engine_error", message="stale"),
        lambda: store.report_progress(job.id, "w-old", step=9, total=10),
        lambda: store.mark_cancelled(job.id, "w-old"),
    ):
        with pytest.raises(LeaseLostError):
            stale()
        assert store.get(job.id, owner_key_id=None) == requeued

    [second_run] = store.claim("w-new", lease_s=10)
    assert (second_run.attempts, second_run.started_at) == (2, first_run.started_at)
    with pytest.raises(LeaseLostError):
        store.complete(job.id, "w-old", result={"stale": True}, seconds_per_step=1.0)
    done = store.complete(job.id, "w-new", result={"seed": 5}, seconds_per_step=1.0)
    assert (done.status, done.result, done.worker_id) == (JobStatus.SUCCEEDED, {"seed": 5}, "w-new")
    with pytest.raises(LeaseLostError):
        store.fail(job.id, "w-new", code="late", message="a terminal job never changes")
    assert store.get(job.id, owner_key_id=None) == done


def test_job_fails_as_worker_lost_after_max_attempts(store: JobStore, db: Db) -> None:
    job = store.submit(make_spec(max_attempts=2, webhook_url="https://hooks.test/lost"))
    for attempt in (1, 2):
        [claimed] = store.claim(f"w{attempt}", lease_s=5)
        assert claimed.attempts == attempt
        db.clock.advance(6)
        assert store.requeue_expired() == 1
    lost = store.get(job.id, owner_key_id=None)
    assert (lost.status, lost.error_code) == (JobStatus.FAILED, "worker_lost")
    assert lost.error_message == "The worker running this job stopped responding 2 times; giving up"
    assert lost.webhook_status is WebhookStatus.PENDING and lost.finished_at == db.clock.now
    [delivery] = store.claim_due_webhooks(limit=10, lease_s=30)
    assert (delivery.job_id, delivery.url) == (job.id, "https://hooks.test/lost")
    assert store.claim("w3", lease_s=5) == []


def test_heartbeat_extends_leases_reports_cancel_and_omits_lost_jobs(store: JobStore, db: Db) -> None:
    kept, lost = store.submit(make_spec()), store.submit(make_spec())
    assert [job.id for job in store.claim("w1", lease_s=10, max_batch=2)] == [kept.id, lost.id]
    db.clock.advance(8)
    assert store.heartbeat([kept.id], "w1", lease_s=10) == {kept.id: False}
    db.clock.advance(8)
    assert store.requeue_expired() == 1
    assert store.get(kept.id, owner_key_id=None).status is JobStatus.RUNNING
    assert store.get(lost.id, owner_key_id=None).status is JobStatus.QUEUED
    assert store.heartbeat([kept.id, lost.id], "w1", lease_s=10) == {kept.id: False}
    assert store.heartbeat([kept.id], "someone-else", lease_s=10) == {}
    assert store.heartbeat([], "w1", lease_s=10) == {}
    store.cancel(kept.id, owner_key_id=1)
    assert store.heartbeat([kept.id], "w1", lease_s=10) == {kept.id: True}


def test_release_requeues_without_counting_the_attempt(store: JobStore) -> None:
    job = store.submit(make_spec())
    store.claim("w1", lease_s=LEASE)
    store.release(job.id, "not-the-owner")
    assert store.get(job.id, owner_key_id=None).status is JobStatus.RUNNING
    store.release(job.id, "w1")
    released = store.get(job.id, owner_key_id=None)
    assert (released.status, released.attempts, released.worker_id) == (JobStatus.QUEUED, 0, None)
    assert store.claim("w2", lease_s=LEASE)[0].attempts == 1


# --- cancel


def test_cancel_queued_job_is_immediate(store: JobStore, db: Db) -> None:
    job = store.submit(make_spec(webhook_url="https://hooks.test/c"))
    cancelled = store.cancel(job.id, owner_key_id=1)
    assert (cancelled.status, cancelled.finished_at) == (JobStatus.CANCELLED, db.clock.now)
    assert store.claim("w1", lease_s=LEASE) == []
    assert store.count_active(1) == 0


def test_cancel_running_job_asks_the_worker_to_stop(store: JobStore) -> None:
    job = store.submit(make_spec(webhook_url="https://hooks.test/c"))
    store.claim("w1", lease_s=LEASE)
    asked = store.cancel(job.id, owner_key_id=None)
    assert (asked.status, asked.cancel_requested) == (JobStatus.RUNNING, True)
    assert store.report_progress(job.id, "w1", step=2, total=10) is True
    stopped = store.mark_cancelled(job.id, "w1")
    assert stopped.status is JobStatus.CANCELLED and stopped.finished_at is not None
    # Cancelled jobs get no webhook.
    assert stopped.webhook_status is WebhookStatus.NONE
    assert store.claim_due_webhooks(limit=10, lease_s=30) == []


def test_cancel_of_a_finished_job_changes_nothing(store: JobStore) -> None:
    done = run_to_success(store, store.submit(make_spec()))
    assert store.cancel(done.id, owner_key_id=1) == done
    assert store.get(done.id, owner_key_id=1) == done


def test_cancel_of_a_foreign_job_is_not_found(store: JobStore) -> None:
    job = store.submit(make_spec(owner_key_id=1))
    with pytest.raises(NotFoundError, match="Request not found"):
        store.cancel(job.id, owner_key_id=2)
    assert store.get(job.id, owner_key_id=None).status is JobStatus.QUEUED


def test_a_cancel_requested_job_whose_worker_died_is_cancelled_not_rerun(store: JobStore, db: Db) -> None:
    job = store.submit(make_spec())
    store.claim("w1", lease_s=5)
    store.cancel(job.id, owner_key_id=1)
    db.clock.advance(6)
    assert store.requeue_expired() == 1
    assert store.get(job.id, owner_key_id=None).status is JobStatus.CANCELLED


# --- affinity, batches, filters


def test_affinity_prefers_held_model_without_starving_others(store: JobStore, db: Db) -> None:
    order = []
    for model in ("A", "B", "A", "B"):
        order.append(store.submit(make_spec(model_id=model)))
        db.clock.advance(1)
    a1, b1, a2, b2 = order
    claim_b = {"held_models": ["B"], "lease_s": LEASE, "affinity_max_wait_s": 30.0}
    assert [job.id for job in store.claim("w", **claim_b)] == [b1.id]
    assert [job.id for job in store.claim("w", **claim_b)] == [b2.id]
    assert [job.id for job in store.claim("w", **claim_b)] == [a1.id]
    assert [job.id for job in store.claim("w", lease_s=LEASE)] == [a2.id]

    old_a = store.submit(make_spec(model_id="A"))
    db.clock.advance(31)
    new_b = store.submit(make_spec(model_id="B"))
    assert [job.id for job in store.claim("w", **claim_b)] == [old_a.id]
    assert [job.id for job in store.claim("w", **claim_b)] == [new_b.id]


def test_idle_workers_spread_over_models_and_peers_keep_their_models(store: JobStore, db: Db) -> None:
    for worker in ("w1", "w2"):
        store.register_worker(worker, device="cpu", engines=["test"])
    a_jobs = [store.submit(make_spec(model_id="A")) for _ in range(3)]
    b_jobs = [store.submit(make_spec(model_id="B")) for _ in range(3)]
    # w1 takes the oldest (A) and is recorded as holding A at once; idle w2 goes for B, not a second copy of A.
    assert [job.id for job in store.claim("w1", lease_s=LEASE)] == [a_jobs[0].id]
    assert store.live_workers(within_s=60)[0].held_models == ("A",)
    assert [job.id for job in store.claim("w2", lease_s=LEASE)] == [b_jobs[0].id]
    # Past the starvation limit, w2 (holding B) still leaves A's old jobs to w1, which holds A ...
    db.clock.advance(31)
    for worker in ("w1", "w2"):
        store.worker_heartbeat(worker, held_models=["A" if worker == "w1" else "B"])
    assert [job.id for job in store.claim("w2", held_models=["B"], lease_s=LEASE)] == [b_jobs[1].id]
    assert [job.id for job in store.claim("w1", held_models=["A"], lease_s=LEASE)] == [a_jobs[1].id]
    # ... but once w1 is gone (not seen within the window), A's starving job is w2's next claim.
    db.clock.advance(31)
    store.worker_heartbeat("w2", held_models=["B"])
    assert [job.id for job in store.claim("w2", held_models=["B"], lease_s=LEASE)] == [a_jobs[2].id]


def test_batch_claims_only_jobs_with_the_same_signature(store: JobStore) -> None:
    kinds = ["x", "y", "x", "y", "x", "x", "x"]
    submitted = [store.submit(make_spec(scheduler=k)) for k in kinds]
    xs = [job.id for job, k in zip(submitted, kinds, strict=True) if k == "x"]
    ys = [job.id for job, k in zip(submitted, kinds, strict=True) if k == "y"]
    first = store.claim("w", lease_s=LEASE, max_batch=4)
    assert [job.id for job in first] == xs[:4]
    assert len({batch_signature(j.kind, j.model_id, j.width, j.height, j.steps, j.scheduler) for j in first}) == 1
    assert all(job.status is JobStatus.RUNNING and job.worker_id == "w" for job in first)
    assert [job.id for job in store.claim("w", lease_s=LEASE, max_batch=4)] == ys
    assert [job.id for job in store.claim("w", lease_s=LEASE, max_batch=4)] == xs[4:]


def _generation_spec(index: int, **params: Any) -> JobSpec:
    values: dict[str, Any] = {"prompt": f"prompt {index}", "seed": index, "steps": 10} | params
    return make_spec(params=GenerationParams(**values), output_keys=(f"outputs/{index}.png",))


def test_generation_jobs_batch_by_their_shared_settings_and_never_when_they_must_run_alone(store: JobStore) -> None:
    # Other prompts and seeds share a batch; another guidance, a refiner pass or an inpaint mask do not.
    mates = [store.submit(_generation_spec(index)) for index in range(3)]
    other_guidance = store.submit(_generation_spec(3, guidance_scale=2.0))
    refined = [store.submit(_generation_spec(index, refiner=True)) for index in (4, 5)]
    assert [job.id for job in store.claim("w", lease_s=LEASE, max_batch=8)] == [job.id for job in mates]
    assert [job.id for job in store.claim("w", lease_s=LEASE, max_batch=8)] == [other_guidance.id]
    assert [job.id for job in store.claim("w", lease_s=LEASE, max_batch=8)] == [refined[0].id]
    assert [job.id for job in store.claim("w", lease_s=LEASE, max_batch=8)] == [refined[1].id]


def test_claim_mates_takes_later_jobs_with_the_head_signature(store: JobStore, db: Db) -> None:
    store.submit(make_spec())
    [head] = store.claim("w", lease_s=LEASE, max_batch=4)
    later = [store.submit(make_spec(scheduler=name)) for name in ("DPMSolverMultistepScheduler", "other")] + [
        store.submit(make_spec()) for _ in range(3)
    ]
    db.clock.advance(5)
    mates = store.claim_mates("w", head.id, limit=2, lease_s=LEASE)
    assert [job.id for job in mates] == [later[0].id, later[2].id]
    assert all(job.status is JobStatus.RUNNING and job.worker_id == "w" and job.attempts == 1 for job in mates)
    assert all(job.lease_expires_at == db.clock.now + timedelta(seconds=LEASE) for job in mates)
    # Another worker's head, a settled head, or no room: nothing is taken.
    assert store.claim_mates("other", head.id, limit=2, lease_s=LEASE) == []
    assert store.claim_mates("w", head.id, limit=0, lease_s=LEASE) == []
    store.complete(head.id, "w", result={}, seconds_per_step=None)
    assert store.claim_mates("w", head.id, limit=2, lease_s=LEASE) == []
    assert store.get(later[3].id, owner_key_id=None).status is JobStatus.QUEUED


def test_racing_claim_mates_take_each_job_once(db: Db) -> None:
    stores = [db.store(real_clock=True) for _ in range(4)]
    heads = [stores[0].submit(make_spec()) for _ in range(4)]
    claimed_heads = [stores[index].claim(f"w{index}", lease_s=LEASE)[0] for index in range(4)]
    assert sorted(job.id for job in claimed_heads) == sorted(job.id for job in heads)
    queued = [stores[0].submit(make_spec()).id for _ in range(40)]
    results: dict[int, list[int]] = {}

    def claimer(index: int) -> None:
        got: list[int] = []
        while mates := stores[index].claim_mates(f"w{index}", claimed_heads[index].id, limit=3, lease_s=LEASE):
            time.sleep(0.002)
            got += [job.id for job in mates]
        results[index] = got

    race(len(stores), claimer)
    taken = [job_id for got in results.values() for job_id in got]
    assert sorted(taken) == sorted(queued)
    jobs_now = [stores[0].get(job_id, owner_key_id=None) for job_id in queued]
    owner = {job_id: f"w{index}" for index, got in results.items() for job_id in got}
    assert all(job.status is JobStatus.RUNNING and job.worker_id == owner[job.id] for job in jobs_now)


def test_claim_honours_model_and_kind_filters(store: JobStore) -> None:
    text = store.submit(make_spec(model_id="model-a"))
    image = store.submit(make_spec(kind=JobKind.IMG2IMG, model_id="model-b"))
    upscale = store.submit(make_spec(kind=JobKind.SUPER_RESOLUTION, model_id="realesr", steps=0))
    assert store.claim("w", models=["nope"], lease_s=LEASE) == []
    assert store.claim("w", models=[], lease_s=LEASE) == []
    assert store.claim("w", kinds=[], lease_s=LEASE) == []
    assert store.claim("w", kinds=[JobKind.TEXT2IMG], models=["model-b"], lease_s=LEASE) == []
    assert [j.id for j in store.claim("w", models=["model-b"], lease_s=LEASE)] == [image.id]
    assert [j.id for j in store.claim("w", kinds=[JobKind.SUPER_RESOLUTION], lease_s=LEASE)] == [upscale.id]
    assert [j.id for j in store.claim("w", lease_s=LEASE)] == [text.id]


# --- position and ETA


def test_queue_position_and_eta_move_as_jobs_finish(store: JobStore, db: Db) -> None:
    store.worker_heartbeat("w", held_models=["model-a"])  # one live worker that holds the model: no loads
    first, second, third = (store.submit(make_spec(steps=10)) for _ in range(3))
    # Nothing measured yet: 1 s per 512×512 step.
    assert [store.queue_position(job) for job in (first, second, third)] == [1, 2, 3]
    assert store.eta_seconds(third) == 30
    store.claim("w", held_models=["model-a"], lease_s=LEASE)
    assert store.queue_position(store.get(third.id, owner_key_id=None)) == 2
    assert store.queue_position(store.get(first.id, owner_key_id=None)) is None
    store.report_progress(first.id, "w", step=5, total=10)
    assert store.eta_seconds(third) == 25
    assert store.eta_seconds(store.get(first.id, owner_key_id=None)) == 5
    store.complete(first.id, "w", result={}, seconds_per_step=1.0, run_seconds=10.0)
    assert store.eta_seconds(third) == 20
    store.claim("w", held_models=["model-a"], lease_s=LEASE)
    store.complete(second.id, "w", result={}, seconds_per_step=1.0, run_seconds=10.0)
    assert store.queue_position(store.get(third.id, owner_key_id=None)) == 1
    assert store.eta_seconds(third) == 10
    assert store.eta_seconds(run_to_success(store, third)) == 0


def test_eta_uses_measured_speed_of_the_model(store: JobStore) -> None:
    store.worker_heartbeat("w", held_models=["m", "unmeasured"])
    for sps in (2.0, 2.0, 50.0):  # rows with only seconds per step (older servers): the median ignores the outlier
        run_to_success(store, store.submit(make_spec(model_id="m", width=512, height=512)), sps=sps)
    same = store.submit(make_spec(model_id="m", width=512, height=512, steps=10))
    assert store.eta_seconds(same) == 20
    store.cancel(same.id, owner_key_id=None)
    # Only other sizes measured: scaled by pixel count.
    wide = store.submit(make_spec(model_id="m", width=1024, height=512, steps=10))
    assert store.eta_seconds(wide) == 40
    # A model never run here goes at this machine's speed (any model's runs), behind `wide`.
    assert store.eta_seconds(store.submit(make_spec(model_id="unmeasured", steps=10))) == 40 + 20


def test_more_live_workers_lower_the_eta(store: JobStore, db: Db) -> None:
    for _ in range(4):
        last = store.submit(make_spec(steps=10))
    store.worker_heartbeat("w1", held_models=["model-a"])
    assert store.eta_seconds(last) == 30 + 10
    store.worker_heartbeat("w2", held_models=["model-a"])
    assert store.eta_seconds(last) == 15 + 10
    db.clock.advance(61)  # both went silent: none counts as one, and nobody holds the model any more
    assert store.eta_seconds(last) == 30 + 10 + DEFAULT_LOAD_S


def test_eta_adds_the_model_load_when_no_live_worker_holds_the_model(store: JobStore, db: Db) -> None:
    store.worker_heartbeat("w", held_models=["held"])
    cold = store.submit(make_spec(model_id="cold", steps=10))
    assert store.eta_seconds(cold) == 10 + DEFAULT_LOAD_S  # never loaded here: the default load
    claimed = store.claim("w", held_models=["held"], lease_s=LEASE)
    store.complete(claimed[0].id, "w", result={}, seconds_per_step=1.0, run_seconds=10.0, load_seconds=4.0)
    store.worker_heartbeat("w", held_models=["held"])  # its cache kept the other model
    again = store.submit(make_spec(model_id="cold", steps=10))
    assert store.eta_seconds(again) == 10 + 4  # the measured load
    # Two queued jobs of a cold model load it once.
    behind = store.submit(make_spec(model_id="cold", steps=10))
    assert store.eta_seconds(behind) == 10 + 4 + 10
    store.worker_heartbeat("w", held_models=["held", "cold"])
    assert store.eta_seconds(behind) == 20


def test_eta_plays_the_queue_as_batching_workers_take_it(store: JobStore) -> None:
    store.register_worker("w", device="cpu", engines=["diffusers"], max_batch=4)
    store.worker_heartbeat("w", held_models=["model-a", "model-b"])
    a1, b1, a2 = (store.submit(make_spec(model_id=model, steps=10)) for model in ("model-a", "model-b", "model-a"))
    # a2 joins a1's batch: both are done after 20 s of work, before b1 (10 s more).
    assert [store.queue_position(job) for job in (a1, b1, a2)] == [1, 2, 3]
    assert [store.eta_seconds(job) for job in (a1, b1, a2)] == [20, 30, 20]
    store.register_worker("w", device="cpu", engines=["diffusers"], max_batch=1)  # no batching: oldest first
    assert [store.eta_seconds(job) for job in (a1, b1, a2)] == [10, 20, 30]


def test_eta_follows_claim_affinity_and_its_starvation_guard(store: JobStore, db: Db) -> None:
    store.register_worker("w", device="cpu", engines=["diffusers"], max_models=1)
    store.worker_heartbeat("w", held_models=["model-b"])
    a1, b1 = store.submit(make_spec(model_id="model-a", steps=10)), store.submit(make_spec(model_id="model-b"))
    # The worker holds model-b: b1 runs first, then model-a is loaded for a1.
    assert [store.queue_position(job) for job in (a1, b1)] == [1, 2]
    assert [store.eta_seconds(job) for job in (a1, b1)] == [10 + DEFAULT_LOAD_S + 10, 10]
    # Past the affinity limit the oldest job goes first whatever the worker holds.
    db.clock.advance(31)
    store.worker_heartbeat("w", held_models=["model-b"])
    assert [store.eta_seconds(job) for job in (a1, b1)] == [
        DEFAULT_LOAD_S + 10,
        DEFAULT_LOAD_S + 10 + DEFAULT_LOAD_S + 10,
    ]


def test_running_eta_counts_the_load_and_moves_within_a_step(store: JobStore, db: Db) -> None:
    run_to_success(store, store.submit(make_spec(model_id="m", steps=10)), sps=3.0)  # 3 s per step here
    job = store.submit(make_spec(model_id="m", steps=10))
    store.claim("w", held_models=[], lease_s=LEASE)  # the worker holds nothing: it loads first (default 10 s)
    running = store.get(job.id, owner_key_id=None)
    assert store.eta_seconds(running) == 30 + DEFAULT_LOAD_S
    db.clock.advance(6)  # still loading: the expected total less the time it ran
    assert store.eta_seconds(running) == 30 + DEFAULT_LOAD_S - 6
    store.report_progress(job.id, "w", step=4, total=10)
    assert store.eta_seconds(running) == 18
    db.clock.advance(2)  # two thirds into step 5
    assert store.eta_seconds(running) == 16
    db.clock.advance(60)  # late: the current step counts as spent, the five after it are still to go
    assert store.eta_seconds(running) == 15


# --- worker registry


def test_live_workers_honours_within(store: JobStore, db: Db) -> None:
    store.register_worker("w1", device="cuda:0", engines=["diffusers", "upscale"])
    db.clock.advance(30)
    store.register_worker("w2", device="cpu", engines=["test"])
    assert [w.worker_id for w in store.live_workers(within_s=20)] == ["w2"]
    assert [w.worker_id for w in store.live_workers(within_s=60)] == ["w1", "w2"]
    store.worker_heartbeat("w1", held_models=["model-a"])
    [w1, w2] = store.live_workers(within_s=20)
    assert (w1.device, w1.engines, w1.held_models, w1.last_seen) == (
        "cuda:0",
        ("diffusers", "upscale"),
        ("model-a",),
        db.clock.now,
    )
    assert (w2.engines, w2.held_models) == (("test",), ())
    store.unregister_worker("w2")
    assert [w.worker_id for w in store.live_workers(within_s=60)] == ["w1"]


# --- webhook outbox


def test_complete_enqueues_a_webhook_only_when_a_url_is_set(store: JobStore) -> None:
    silent = run_to_success(store, store.submit(make_spec()))
    assert silent.webhook_status is WebhookStatus.NONE
    assert store.claim_due_webhooks(limit=10, lease_s=30) == []
    loud = run_to_success(store, store.submit(make_spec(webhook_url="https://hooks.test/a")))
    assert loud.webhook_status is WebhookStatus.PENDING
    [delivery] = store.claim_due_webhooks(limit=10, lease_s=30)
    assert (delivery.job_id, delivery.url, delivery.attempts) == (loud.id, "https://hooks.test/a", 0)


def test_fail_enqueues_a_webhook_too(store: JobStore) -> None:
    job = store.submit(make_spec(webhook_url="https://hooks.test/f"))
    store.claim("w", lease_s=LEASE)
    failed = store.fail(job.id, "w", code="engine_error", message="boom")
    assert (failed.status, failed.error_code, failed.error_message) == (JobStatus.FAILED, "engine_error", "boom")
    assert failed.webhook_status is WebhookStatus.PENDING
    assert [d.job_id for d in store.claim_due_webhooks(limit=10, lease_s=30)] == [job.id]


def test_webhook_delivery_is_locked_then_retried_then_delivered(store: JobStore, db: Db) -> None:
    job = run_to_success(store, store.submit(make_spec(webhook_url="https://hooks.test/r")))
    [delivery] = store.claim_due_webhooks(limit=10, lease_s=30)
    assert store.claim_due_webhooks(limit=10, lease_s=30) == []
    db.clock.advance(31)  # the first sender's lock ran out
    [again] = store.claim_due_webhooks(limit=10, lease_s=30)
    assert again.id == delivery.id
    retry_at = db.clock.now + timedelta(seconds=10)
    store.record_webhook_attempt(delivery.id, delivered=False, status_code=503, error="busy", next_attempt_at=retry_at)
    assert store.get(job.id, owner_key_id=None).webhook_status is WebhookStatus.RETRYING
    assert store.claim_due_webhooks(limit=10, lease_s=30) == []
    db.clock.advance(11)
    [retry] = store.claim_due_webhooks(limit=10, lease_s=30)
    assert (retry.id, retry.attempts, retry.next_attempt_at) == (delivery.id, 1, retry_at)
    store.record_webhook_attempt(delivery.id, delivered=True, status_code=200, error=None, next_attempt_at=None)
    assert store.get(job.id, owner_key_id=None).webhook_status is WebhookStatus.DELIVERED
    db.clock.advance(3600)
    assert store.claim_due_webhooks(limit=10, lease_s=30) == []
    with store._engine.connect() as conn:
        row = conn.execute(sa.select(job_webhooks).where(job_webhooks.c.id == delivery.id)).one()
    assert (row.attempts, row.last_status_code, row.delivered_at is not None) == (2, 200, True)


def test_webhook_given_up_is_failed_and_never_sent_again(store: JobStore, db: Db) -> None:
    job = run_to_success(store, store.submit(make_spec(webhook_url="https://hooks.test/g")))
    [delivery] = store.claim_due_webhooks(limit=10, lease_s=30)
    store.record_webhook_attempt(delivery.id, delivered=False, status_code=404, error="gone", next_attempt_at=None)
    assert store.get(job.id, owner_key_id=None).webhook_status is WebhookStatus.FAILED
    # A late report from a sender whose lock ran out does not undo the outcome.
    store.record_webhook_attempt(delivery.id, delivered=True, status_code=200, error=None, next_attempt_at=None)
    assert store.get(job.id, owner_key_id=None).webhook_status is WebhookStatus.FAILED
    db.clock.advance(3600)
    assert store.claim_due_webhooks(limit=10, lease_s=30) == []
    with pytest.raises(NotFoundError):
        store.record_webhook_attempt(10**9, delivered=True, status_code=200, error=None, next_attempt_at=None)


def test_racing_webhook_senders_never_share_a_delivery(db: Db) -> None:
    setup = db.store(real_clock=True)
    for _ in range(20):
        run_to_success(setup, setup.submit(make_spec(webhook_url="https://hooks.test/race")))
    senders = [db.store(real_clock=True) for _ in range(4)]
    taken: list[list[int]] = [[] for _ in senders]

    def sender(index: int) -> None:
        while batch := senders[index].claim_due_webhooks(limit=3, lease_s=60):
            taken[index].extend(delivery.id for delivery in batch)

    race(len(senders), sender)
    every = [delivery_id for ids in taken for delivery_id in ids]
    assert len(every) == 20 and len(set(every)) == 20


# --- wake-ups


def _in_background(delay_s: float, action: Callable[[], object]) -> threading.Thread:
    def run() -> None:
        time.sleep(delay_s)
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_wait_for_work_wakes_when_a_job_is_submitted_elsewhere(db: Db) -> None:
    waiter, submitter = db.store(), db.store()
    waiter.wait_for_work(0.05)  # settles the listener (PostgreSQL) before the race starts
    thread = _in_background(0.3, lambda: submitter.submit(make_spec()))
    started = time.monotonic()
    waiter.wait_for_work(10.0)
    elapsed = time.monotonic() - started
    thread.join()
    if db.dialect == "postgresql":
        assert 0.25 <= elapsed < 2.0
    else:
        assert elapsed < 0.5  # SQLite polls
    assert waiter.claim("w", lease_s=LEASE) != []


def test_wait_for_work_returns_after_the_timeout_when_idle(db: Db) -> None:
    store = db.store()
    started = time.monotonic()
    store.wait_for_work(0.15)
    assert 0.14 <= time.monotonic() - started < 1.0
    if db.dialect == "postgresql":
        started = time.monotonic()
        store.wait_for_work(0.6)
        assert 0.55 <= time.monotonic() - started < 1.5


def test_wait_for_job_change_wakes_when_the_job_ends(db: Db) -> None:
    api, worker = db.store(), db.store()
    job = api.submit(make_spec())
    worker.claim("w", lease_s=LEASE)
    api.wait_for_job_change(job.id, 0.05)
    thread = _in_background(0.3, lambda: worker.complete(job.id, "w", result={}, seconds_per_step=None))
    started = time.monotonic()
    api.wait_for_job_change(job.id, 10.0)
    elapsed = time.monotonic() - started
    thread.join()
    if db.dialect == "postgresql":
        assert 0.25 <= elapsed < 2.0
    else:
        assert elapsed < 0.5
    assert api.get(job.id, owner_key_id=None).status is JobStatus.SUCCEEDED


def test_a_change_just_before_the_wait_is_not_missed(postgres_url: str) -> None:
    db = Db(postgres_url, "postgresql", FakeClock())
    try:
        api, worker = db.store(), db.store()
        job = api.submit(make_spec())
        worker.claim("w", lease_s=LEASE)
        api.wait_for_job_change(job.id, 0.05)  # listening from here on
        worker.complete(job.id, "w", result={}, seconds_per_step=None)
        time.sleep(0.3)  # the notification arrives while nobody waits
        started = time.monotonic()
        api.wait_for_job_change(job.id, 10.0)
        assert time.monotonic() - started < 0.2
        started = time.monotonic()
        api.wait_for_job_change(job.id, 0.3)  # that change was consumed
        assert time.monotonic() - started >= 0.25
    finally:
        db.close()


def test_status_changes_respect_the_transition_table(store: JobStore) -> None:
    job = store.submit(make_spec())
    with pytest.raises(LeaseLostError):
        store.mark_cancelled(job.id, "w")  # queued: nobody holds it
    store.claim("w", lease_s=LEASE)
    done = store.complete(job.id, "w", result={}, seconds_per_step=None)
    for late in (
        lambda: store.complete(job.id, "w", result={"again": 1}, seconds_per_step=None),
        lambda: store.mark_cancelled(job.id, "w"),
        lambda: store.report_progress(job.id, "w", step=1, total=2),
    ):
        with pytest.raises(LeaseLostError):
            late()
    store.release(job.id, "w")
    assert store.get(job.id, owner_key_id=None) == done
