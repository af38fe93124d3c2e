"""The control channel against real SQLite and PostgreSQL: command versions, watchers, persisted storage, clear."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from sdserver.config import S3Config
from sdserver.database import create_db_engine
from sdserver.job_params import FakeParams
from sdserver.jobs import JobKind, JobSpec, JobStatus
from sdserver.jobstore.control import Command, CommandWatcher, ControlStore
from sdserver.jobstore.store import JobStore
from tests.support.postgres_server import fresh_database

CONFIG = S3Config(
    bucket="images",
    prefix="sd/out",
    endpoint_url="http://s3.test:9000",
    region="eu-west-1",
    public_base_url=None,
    access_key_id="AKIAEXAMPLEKEY123",
    secret_access_key="very-secret-value",
)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "postgres":
        url = fresh_database(request.getfixturevalue("postgres_url"))
    else:
        url = f"sqlite:///{tmp_path / 'control.db'}"
    engine = create_db_engine(url)
    yield engine
    engine.dispose()


def submit(jobs: JobStore, owner: int) -> int:
    spec = JobSpec(
        owner_key_id=owner,
        kind=JobKind.TEXT2IMG,
        model_id="test-ok",
        params=FakeParams(),
        output_keys=(),
        future_links=(),
        width=64,
        height=64,
        steps=2,
        max_attempts=1,
    )
    return jobs.submit(spec).id


def test_issue_bumps_versions_per_command(db: Engine) -> None:
    control = ControlStore(db)
    assert control.versions() == dict.fromkeys(Command, 0)
    assert control.issue(Command.CLEAR_CACHE) == 1
    assert control.issue(Command.CLEAR_CACHE) == 2
    assert control.issue(Command.RESTART_WORKERS) == 1
    assert control.versions() == {Command.CLEAR_CACHE: 2, Command.RESTART_WORKERS: 1, Command.STORAGE: 0}


def test_concurrent_issues_lose_no_version(db: Engine) -> None:
    control = ControlStore(db)
    versions: list[int] = []
    lock = threading.Lock()

    def issue_some() -> None:
        for _ in range(5):
            version = control.issue(Command.STORAGE)
            with lock:
                versions.append(version)

    threads = [threading.Thread(target=issue_some) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(versions) == list(range(1, 21))


def test_watcher_sees_only_commands_issued_after_it_started(db: Engine) -> None:
    control = ControlStore(db)
    control.issue(Command.RESTART_WORKERS)  # before the watcher: a fresh worker must not restart again
    watcher = CommandWatcher(control, poll_s=0.0)
    assert watcher.poll() == set()
    control.issue(Command.CLEAR_CACHE)
    control.issue(Command.CLEAR_CACHE)
    control.issue(Command.STORAGE)
    assert watcher.poll() == {Command.CLEAR_CACHE, Command.STORAGE}
    assert watcher.poll() == set()


def test_watcher_reads_the_database_at_most_every_poll_interval(db: Engine) -> None:
    now = [100.0]
    control = ControlStore(db)
    watcher = CommandWatcher(control, poll_s=1.0, clock=lambda: now[0])
    control.issue(Command.CLEAR_CACHE)
    now[0] += 0.5
    assert watcher.poll() == set()  # too soon: not even read
    assert watcher.poll(force=True) == {Command.CLEAR_CACHE}
    control.issue(Command.RESTART_WORKERS)
    now[0] += 1.0
    assert watcher.poll() == {Command.RESTART_WORKERS}


def test_storage_setting_round_trips_and_is_replaced(db: Engine) -> None:
    control = ControlStore(db)
    assert control.load_storage() is None
    control.save_storage(CONFIG)
    assert control.load_storage() == CONFIG
    moved = S3Config(**{**CONFIG.__dict__, "bucket": "other"})
    control.save_storage(moved)
    assert control.load_storage() == moved


def test_public_view_and_scrub_hide_the_credentials() -> None:
    shown = CONFIG.public()
    assert "very-secret-value" not in str(shown)
    assert CONFIG.access_key_id not in str(shown)
    assert shown["aws_access_key_id"].endswith("Y123")
    assert shown["bucket"] == "images" and shown["prefix"] == "sd/out"
    assert CONFIG.scrub("bad key AKIAEXAMPLEKEY123 with very-secret-value") == "bad key *** with ***"


def test_apply_to_switches_settings_to_the_bucket(tmp_path: Path) -> None:
    from sdserver.config import Settings

    settings = Settings(data_dir=tmp_path, temp_ttl_s=600)
    applied = CONFIG.apply_to(settings)
    assert applied.storage == "s3" and applied.s3_bucket == "images" and applied.s3_prefix == "sd/out"
    assert applied.s3_secret_access_key is not None
    assert applied.s3_secret_access_key.get_secret_value() == "very-secret-value"
    assert applied.temp_ttl_s == 600


def test_cancel_queued_of_one_owner_or_all(db: Engine) -> None:
    jobs, control = JobStore(db), ControlStore(db)
    try:
        first, second, theirs, third = (submit(jobs, owner) for owner in (1, 1, 2, 1))
        assert [job.id for job in jobs.claim("w1", lease_s=30)] == [first]  # the oldest: now running
        assert control.cancel_queued(owner_key_id=1) == [second, third]
        status = {job_id: jobs.get(job_id, owner_key_id=None).status for job_id in (first, second, theirs, third)}
        assert status == {
            first: JobStatus.RUNNING,
            second: JobStatus.CANCELLED,
            theirs: JobStatus.QUEUED,
            third: JobStatus.CANCELLED,
        }
        assert control.cancel_queued(owner_key_id=None) == [theirs]
        assert jobs.get(theirs, owner_key_id=None).finished_at is not None
        assert control.cancel_queued(owner_key_id=None) == []
    finally:
        jobs.close()


def test_the_default_model_is_kept_and_replaced_in_the_database(db: Engine) -> None:
    control = ControlStore(db)
    assert control.load_default_model() is None
    control.save_default_model("demo")
    assert ControlStore(db).load_default_model() == "demo"
    control.save_default_model("other")
    assert control.load_default_model() == "other"
