"""Store aggregates for system_details and /metrics, on SQLite and PostgreSQL."""

from __future__ import annotations

import time

from sqlalchemy.engine import Engine

from sdserver.jobs import JobKind, JobStatus
from sdserver.jobstore.stats import read_stats
from sdserver.jobstore.store import JobStore
from tests.jobstore.test_control import db, submit

__all__ = ["db"]  # the SQLite + PostgreSQL engine fixture


def test_counts_durations_workers_and_queue_time(db: Engine) -> None:
    jobs = JobStore(db)
    try:
        done, running, queued = submit(jobs, 1), submit(jobs, 1), submit(jobs, 2)
        jobs.register_worker("w1", device="cuda:0", engines=["test"])
        assert [job.id for job in jobs.claim("w1", lease_s=60)] == [done]
        time.sleep(0.2)
        jobs.complete(done, "w1", result={}, seconds_per_step=0.5)
        assert [job.id for job in jobs.claim("w1", lease_s=60)] == [running]
        jobs.report_progress(running, "w1", step=1, total=2)
        jobs.worker_heartbeat("w1", held_models=["test-ok"])
        stats = read_stats(db)
    finally:
        jobs.close()
    assert stats.count(JobStatus.QUEUED) == 1 and stats.count(JobStatus.RUNNING) == 1
    assert stats.count(JobStatus.SUCCEEDED, JobKind.TEXT2IMG) == 1
    assert stats.count(JobStatus.SUCCEEDED, JobKind.MODEL_LOAD) == 0
    [total] = stats.durations
    assert (total.kind, total.model_id, total.count) == ("text2img", "test-ok", 1)
    assert 0.2 <= total.seconds < 30
    assert [worker.worker_id for worker in stats.workers] == ["w1"]
    assert stats.held_models() == {"test-ok": 1}
    # Measured 0.5 s per step for this model: 2 steps queued + 1 step left of the running one.
    assert stats.queue_seconds == 2
    assert queued > running
