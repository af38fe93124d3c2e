"""The worker loop against a real job store (SQLite file and PostgreSQL) and a real local object store."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine as DbEngine

from sdserver.config import Settings
from sdserver.database import create_db_engine
from sdserver.engines.fake import FakeEngine, render_output
from sdserver.errors import StorageError
from sdserver.job_params import FakeParams
from sdserver.jobs import Job, JobKind, JobSpec, JobStatus
from sdserver.jobstore.store import JobStore
from sdserver.objects.base import StoredObject, make_object_key
from sdserver.objects.local import LocalObjectStore
from sdserver.worker.loop import EXIT_DEVICE_FAILURE, EXIT_OK, Worker
from tests.support.postgres_server import fresh_database

OWNER = 1
SECRET = "worker-test-signing-secret"


@dataclass
class Harness:
    """One isolated deployment: settings, database, job store and object store."""

    settings: Settings
    db: DbEngine
    store: JobStore
    objects: LocalObjectStore

    def submit(self, model_id: str, *, samples: int = 1, size: int = 64, steps: int = 4, **params: Any) -> Job:
        keys = tuple(make_object_key("outputs", "png", temp=False) for _ in range(samples))
        spec = JobSpec(
            owner_key_id=OWNER,
            kind=JobKind.TEXT2IMG,
            model_id=model_id,
            params=FakeParams(prompt="a lighthouse at dusk", steps=steps, **params),
            output_keys=keys,
            future_links=tuple(self.objects.url_for(key) for key in keys),
            width=size,
            height=size,
            steps=steps,
            max_attempts=self.settings.job_max_attempts,
        )
        return self.store.submit(spec)

    def get(self, job_id: int) -> Job:
        return self.store.get(job_id, owner_key_id=None)

    def wait_for(self, job_id: int, check: Callable[[Job], bool], timeout: float = 10.0) -> Job:
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if check(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} never reached the expected state; last seen: {job}")
            time.sleep(0.02)

    def wait_terminal(self, job_id: int, timeout: float = 10.0) -> Job:
        return self.wait_for(job_id, lambda job: job.status.is_terminal, timeout)

    def output_files(self) -> list[str]:
        root = self.objects.root / "outputs"
        return sorted(path.relative_to(self.objects.root).as_posix() for path in root.rglob("*") if path.is_file())


def make_settings(data_dir: Path, database_url: str | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "base_url": "http://sd.test:8000",
        "engines": ["test"],
        "job_lease_s": 1.0,
        "worker_poll_s": 0.05,
        "signing_secret": SECRET,
        **overrides,
    }
    return Settings(**values)


def open_harness(settings: Settings) -> Harness:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = create_db_engine(settings.sql_url)
    objects = LocalObjectStore(settings.objects_dir, settings.external_base_url, SECRET.encode(), settings.temp_ttl_s)
    return Harness(settings, db, JobStore(db), objects)


def close_harness(harness: Harness) -> None:
    close = getattr(harness.store, "close", None)
    if close is not None:
        close()
    harness.db.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    url = fresh_database(request.getfixturevalue("postgres_url")) if request.param == "postgres" else None
    built = open_harness(make_settings(tmp_path / "data", url))
    yield built
    close_harness(built)


class WorkerThread:
    """A `Worker.run` in a thread, stopped (gracefully) when the block ends."""

    def __init__(self, harness: Harness, *, grace_s: float = 5.0, jobs: Any = None, objects: Any = None) -> None:
        self.stop = threading.Event()
        self.worker = Worker(
            harness.settings,
            jobs or harness.store,
            objects or harness.objects,
            [FakeEngine()],
            f"test-worker-{uuid.uuid4().hex[:8]}",
            grace_s=grace_s,
            idle_wait_s=0.1,
        )
        self.exit_code: int | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.exit_code = self.worker.run(self.stop)

    def __enter__(self) -> WorkerThread:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.join()

    def join(self, timeout: float = 15.0) -> int | None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the worker did not stop"
        return self.exit_code


def test_completes_jobs_with_the_engine_bytes_meta_and_full_progress(harness: Harness) -> None:
    single = harness.submit("test-ok", seed=11)
    double = harness.submit("test-ok", samples=2, seed=12, steps=6)
    with WorkerThread(harness):
        jobs = [harness.wait_terminal(single.id), harness.wait_terminal(double.id)]
    for job in jobs:
        assert job.status is JobStatus.SUCCEEDED, job.error_message
        expected = render_output(job)
        assert [harness.objects.get(key) for key in job.output_keys] == expected.images
        assert job.result == expected.meta
        assert job.progress_step == job.progress_total == job.steps
        assert job.progress_percent == 100.0
        assert job.attempts == 1
    assert harness.output_files() == sorted([*single.output_keys, *double.output_keys])


@pytest.mark.parametrize(
    ("model_id", "code", "words"),
    [
        ("test-raise", "engine_error", "RuntimeError: test-raise"),
        ("test-oom", "out_of_memory", "out of memory"),
    ],
    ids=["raise", "oom"],
)
def test_engine_errors_fail_the_job_and_the_worker_goes_on(
    harness: Harness, model_id: str, code: str, words: str
) -> None:
    bad = harness.submit(model_id)
    good = harness.submit("test-ok")
    with WorkerThread(harness) as worker:
        failed = harness.wait_terminal(bad.id)
        succeeded = harness.wait_terminal(good.id)
    assert (failed.status, failed.error_code) == (JobStatus.FAILED, code)
    assert words in (failed.error_message or "")
    assert not any(harness.objects.exists(key) for key in failed.output_keys)
    assert succeeded.status is JobStatus.SUCCEEDED
    assert worker.exit_code == EXIT_OK


def test_device_failure_fails_the_job_and_ends_the_worker_non_zero(harness: Harness) -> None:
    job = harness.submit("test-crash")
    with WorkerThread(harness) as worker:
        assert worker.join() == EXIT_DEVICE_FAILURE
    failed = harness.get(job.id)
    assert (failed.status, failed.error_code) == (JobStatus.FAILED, "device_failure")
    assert worker.worker.worker_id not in {info.worker_id for info in harness.store.live_workers(within_s=60)}


def test_cancel_stops_a_running_job_at_its_next_step(harness: Harness) -> None:
    job = harness.submit("test-slow", steps=50, step_delay_s=0.05)
    with WorkerThread(harness):
        harness.wait_for(job.id, lambda job: job.status is JobStatus.RUNNING and job.progress_step >= 1)
        cancelled_at = time.monotonic()
        harness.store.cancel(job.id, owner_key_id=OWNER)
        stopped = harness.wait_terminal(job.id)
        assert time.monotonic() - cancelled_at < 2.0, "the cancel was not seen within a few steps"
        after = harness.submit("test-ok")
        assert harness.wait_terminal(after.id).status is JobStatus.SUCCEEDED
    assert stopped.status is JobStatus.CANCELLED
    assert stopped.progress_step < 50
    assert not any(harness.objects.exists(key) for key in stopped.output_keys)


def test_graceful_stop_releases_a_job_that_outlives_the_grace_period(harness: Harness) -> None:
    job = harness.submit("test-hang")
    worker = WorkerThread(harness, grace_s=0.3)
    with worker:
        before = harness.wait_for(job.id, lambda job: job.status is JobStatus.RUNNING)
        worker.stop.set()
        assert worker.join() == EXIT_OK
    released = harness.get(job.id)
    assert released.status is JobStatus.QUEUED
    assert released.attempts == before.attempts - 1
    assert released.worker_id is None


def test_graceful_stop_finishes_a_job_that_ends_within_the_grace_period(harness: Harness) -> None:
    job = harness.submit("test-slow", steps=5, step_delay_s=0.1)
    worker = WorkerThread(harness, grace_s=10.0)
    with worker:
        harness.wait_for(job.id, lambda job: job.status is JobStatus.RUNNING)
        worker.stop.set()
        assert worker.join() == EXIT_OK
    assert harness.get(job.id).status is JobStatus.SUCCEEDED


def test_a_lost_lease_stops_the_job_and_drops_its_result(harness: Harness) -> None:
    job = harness.submit("test-slow", steps=100, step_delay_s=0.05)
    # A store whose clock runs an hour ahead sees the lease as long expired and lets another worker take it.
    thief = JobStore(harness.db, clock=lambda: datetime.now(UTC) + timedelta(hours=1))
    try:
        with WorkerThread(harness):
            harness.wait_for(job.id, lambda job: job.status is JobStatus.RUNNING and job.progress_step >= 1)
            assert thief.requeue_expired() == 1
            [taken] = thief.claim("thief", lease_s=3600)
            assert taken.id == job.id
            # The slow job had 5 s left: the next job finishing well before proves the worker dropped it.
            after = harness.submit("test-ok")
            assert harness.wait_terminal(after.id, timeout=3.0).status is JobStatus.SUCCEEDED
            time.sleep(2 * harness.settings.job_lease_s)
    finally:
        thief.close()
    still = harness.get(job.id)
    assert (still.status, still.worker_id) == (JobStatus.RUNNING, "thief")
    assert not any(harness.objects.exists(key) for key in job.output_keys)


class FailingObjectStore:
    """The local store, except that writes fail as if the disk or bucket were gone."""

    def __init__(self, inner: LocalObjectStore) -> None:
        self._inner = inner

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        raise StorageError(f"Could not write object {key}: No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_storage_failure_fails_the_job_instead_of_completing_it(harness: Harness) -> None:
    job = harness.submit("test-ok")
    with WorkerThread(harness, objects=FailingObjectStore(harness.objects)):
        failed = harness.wait_terminal(job.id)
    assert (failed.status, failed.error_code) == (JobStatus.FAILED, "storage_unavailable")
    assert "No space left" in (failed.error_message or "")


class FlakyJobStore:
    """The real store, but chosen calls fail a few times as if the database were briefly down."""

    def __init__(self, inner: JobStore, failures: dict[str, int]) -> None:
        self._inner = inner
        self.failures = dict(failures)
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.failures.get(name, 0) > 0:
                self.failures[name] -= 1
                raise sa_exc.OperationalError("SELECT 1", {}, Exception("connection refused"))
            return target(*args, **kwargs)

        return call


def test_a_briefly_unavailable_database_delays_work_but_never_crashes_the_loop(harness: Harness) -> None:
    flaky = FlakyJobStore(
        harness.store,
        {"register_worker": 1, "claim": 2, "report_progress": 2, "complete": 2, "heartbeat": 1, "requeue_expired": 1},
    )
    job = harness.submit("test-ok")
    with WorkerThread(harness, jobs=flaky) as worker:
        done = harness.wait_terminal(job.id)
    assert done.status is JobStatus.SUCCEEDED
    assert worker.exit_code == EXIT_OK
    assert flaky.failures["claim"] == flaky.failures["complete"] == 0


def test_progress_writes_are_throttled(tmp_path: Path) -> None:
    harness = open_harness(make_settings(tmp_path / "data"))
    counting = FlakyJobStore(harness.store, {})
    job = harness.submit("test-ok", steps=200)
    with WorkerThread(harness, jobs=counting):
        done = harness.wait_terminal(job.id)
    assert done.progress_step == done.progress_total == 200
    # The first step and the last one (and at most one per 0.25 s between): far fewer writes than steps.
    assert 2 <= counting.calls["report_progress"] <= 10
    close_harness(harness)


def test_the_worker_registers_heartbeats_its_held_models_and_unregisters(tmp_path: Path) -> None:
    harness = open_harness(make_settings(tmp_path / "data"))
    job = harness.submit("test-ok")
    with WorkerThread(harness) as worker:
        harness.wait_terminal(job.id)
        deadline = time.monotonic() + 5
        while True:
            [info] = harness.store.live_workers(within_s=60)
            if "test-ok" in info.held_models or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert info.worker_id == worker.worker.worker_id
        assert list(info.engines) == ["test"]
        assert list(info.held_models) == ["test-ok"]
    assert harness.store.live_workers(within_s=60) == []
    close_harness(harness)


def test_every_job_event_is_one_log_line_with_id_kind_model_size_steps_and_seconds(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="sdserver.worker.loop")
    good = harness.submit("test-ok", size=64, steps=4)
    bad = harness.submit("test-raise")
    slow = harness.submit("test-slow", steps=50, step_delay_s=0.05)
    with WorkerThread(harness):
        harness.wait_terminal(good.id)
        harness.wait_terminal(bad.id)
        harness.wait_for(slow.id, lambda job: job.status is JobStatus.RUNNING and job.progress_step >= 1)
        harness.store.cancel(slow.id, owner_key_id=OWNER)
        harness.wait_terminal(slow.id)
    lines = [record.getMessage() for record in caplog.records if record.name == "sdserver.worker.loop"]

    def events(job: Job) -> list[str]:
        return [line for line in lines if line.startswith(f"job {job.id} ")]

    started, succeeded = events(good)
    assert started == f"job {good.id} started: text2img model=test-ok 64x64 4 steps"
    assert re.fullmatch(rf"job {good.id} succeeded: text2img model=test-ok 64x64 4 steps in \d+\.\d s", succeeded)
    # A failure is logged once, with its code.
    [_, failed] = events(bad)
    assert re.fullmatch(
        rf"job {bad.id} failed \(engine_error\): text2img model=test-raise .* after \d+\.\d s: .*", failed
    )
    assert events(slow)[-1].startswith(f"job {slow.id} cancelled: text2img model=test-slow")
