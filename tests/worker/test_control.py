"""Workers reacting to the control channel: clear_cache between jobs, restart_workers after the current job."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdserver.config import S3Config
from sdserver.engines.fake import FakeEngine
from sdserver.job_params import FakeParams
from sdserver.jobs import JobKind, JobSpec, JobStatus
from sdserver.jobstore.control import Command, CommandWatcher, ControlStore
from sdserver.objects.base import make_object_key
from sdserver.objects.switching import follow_storage
from sdserver.worker.control import WorkerControl
from sdserver.worker.loop import EXIT_RESTART, Worker
from sdserver.worker.main import build_object_store, signing_secret_for
from sdserver.worker.supervisor import WorkerSupervisor
from tests.support.s3_server import S3Server
from tests.worker.test_loop import Harness, close_harness, make_settings, open_harness
from tests.worker.test_supervisor import wait_until


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    built = open_harness(make_settings(tmp_path / "data"))
    yield built
    close_harness(built)


class ControlledWorker:
    """A worker in a thread, hooked to the control channel with a fast poll."""

    def __init__(self, harness: Harness) -> None:
        self.engine = FakeEngine()
        self.control = ControlStore(harness.db)
        self.worker = Worker(
            harness.settings,
            harness.store,
            harness.objects,
            [self.engine],
            f"control-worker-{uuid.uuid4().hex[:8]}",
            grace_s=5.0,
            idle_wait_s=0.05,
            control=WorkerControl(CommandWatcher(self.control, poll_s=0.05), [self.engine]),
        )
        self.stop = threading.Event()
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.exit_code = self.worker.run(self.stop)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)
        assert not self.thread.is_alive()


def test_clear_cache_drops_loaded_models_and_the_worker_goes_on(harness: Harness) -> None:
    worker = ControlledWorker(harness)
    try:
        job = harness.wait_terminal(harness.submit("test-ok", seed=1).id)
        assert job.status is JobStatus.SUCCEEDED
        assert worker.engine.held_models() == frozenset({"test-ok"})
        worker.control.issue(Command.CLEAR_CACHE)
        wait_until(lambda: not worker.engine.held_models(), timeout=5, what="the engine to drop its models")
        # The registry learns it at the next heartbeat, so claims stop preferring this worker for the model.
        wait_until(
            lambda: all(not w.held_models for w in harness.store.live_workers(within_s=60)),
            timeout=5,
            what="the heartbeat to report no loaded model",
        )
        after = harness.wait_terminal(harness.submit("test-ok", seed=2).id)
        assert after.status is JobStatus.SUCCEEDED
        assert worker.thread.is_alive()
    finally:
        worker.close()


def test_restart_lets_the_running_job_finish_then_exits_and_leaves_the_queue_alone(harness: Harness) -> None:
    worker = ControlledWorker(harness)
    try:
        slow = harness.submit("test-slow", steps=6, step_delay_s=0.1, seed=3)
        harness.wait_for(slow.id, lambda job: job.status is JobStatus.RUNNING)
        waiting = harness.submit("test-ok", seed=4)  # queued behind it
        worker.control.issue(Command.RESTART_WORKERS)
        worker.thread.join(15)
        assert worker.exit_code == EXIT_RESTART
        done = harness.get(slow.id)
        assert done.status is JobStatus.SUCCEEDED and done.attempts == 1  # finished, not released or re-run
        assert harness.get(waiting.id).status is JobStatus.QUEUED  # nothing lost, nothing claimed on the way out
        assert harness.store.live_workers(within_s=60) == []  # unregistered on exit
    finally:
        worker.close()


def test_a_worker_started_after_a_restart_command_does_not_restart_again(harness: Harness) -> None:
    ControlStore(harness.db).issue(Command.RESTART_WORKERS)
    worker = ControlledWorker(harness)
    try:
        job = harness.wait_terminal(harness.submit("test-ok", seed=5).id)
        assert job.status is JobStatus.SUCCEEDED
        assert worker.thread.is_alive()
    finally:
        worker.close()
    assert worker.exit_code == 0


def test_supervised_workers_restart_as_fresh_processes_without_losing_a_job(harness: Harness) -> None:
    supervisor = WorkerSupervisor(harness.settings, 1, log_level="warning", grace_s=5.0)
    supervisor.start()
    try:
        slow = harness.submit("test-slow", steps=10, step_delay_s=0.15, seed=6)
        harness.wait_for(slow.id, lambda job: job.status is JobStatus.RUNNING, timeout=30)
        [old_pid] = supervisor.pids()
        ControlStore(harness.db).issue(Command.RESTART_WORKERS)
        queued = harness.submit("test-ok", seed=7)
        done = harness.wait_terminal(slow.id, timeout=30)
        assert done.status is JobStatus.SUCCEEDED and done.attempts == 1
        wait_until(lambda: supervisor.pids() not in ([], [old_pid]), timeout=30, what="a fresh worker process")
        after = harness.wait_terminal(queued.id, timeout=30)
        assert after.status is JobStatus.SUCCEEDED and after.attempts == 1
        assert after.worker_id != done.worker_id  # run by the fresh process
    finally:
        supervisor.stop(timeout=10)


def test_a_job_linked_into_a_store_the_worker_does_not_know_yet_makes_it_catch_up(
    harness: Harness, s3_server: S3Server
) -> None:
    """update_s3 persisted a bucket and the API already hands out its links; this worker has not polled yet."""
    from sdserver.objects.s3 import S3ObjectStore

    control = ControlStore(harness.db)
    objects = build_object_store(harness.settings, harness.db)
    engine = FakeEngine()
    secret = signing_secret_for(harness.settings, harness.db)
    watcher = CommandWatcher(control, poll_s=3600.0)  # never polls on its own during this test
    worker = Worker(
        harness.settings,
        harness.store,
        objects,
        [engine],
        "catch-up-worker",
        idle_wait_s=0.05,
        control=WorkerControl(
            watcher,
            [engine],
            reload_storage=lambda: follow_storage(objects, harness.settings, control, signing_secret=secret),
        ),
    )
    bucket = f"catch-up-{uuid.uuid4().hex[:8]}"
    s3_server.client().create_bucket(Bucket=bucket)
    config = S3Config(
        bucket, "out", s3_server.endpoint_url, s3_server.region, None, s3_server.access_key, s3_server.secret_key
    )
    control.save_storage(config)
    control.issue(Command.STORAGE)
    api_store = S3ObjectStore.from_settings(config.apply_to(harness.settings))
    key = make_object_key("outputs", "png", temp=False)
    spec = JobSpec(
        owner_key_id=1,
        kind=JobKind.TEXT2IMG,
        model_id="test-ok",
        params=FakeParams(prompt="x", steps=2),
        output_keys=(key,),
        future_links=(api_store.url_for(key),),
        width=64,
        height=64,
        steps=2,
        max_attempts=1,
    )
    job = harness.store.submit(spec)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert harness.wait_terminal(job.id).status is JobStatus.SUCCEEDED
    finally:
        stop.set()
        thread.join(15)
    assert api_store.exists(key)
    assert not harness.objects.exists(key)  # not in the local folder
    assert objects.config == config
