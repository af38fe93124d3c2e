"""Worker processes: settings through the environment, a SIGKILLed worker's job finished by another, supervision."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sdserver.config import Settings
from sdserver.engines.fake import render_output
from sdserver.jobs import JobStatus
from sdserver.worker.main import run_worker
from sdserver.worker.supervisor import WorkerSupervisor, settings_to_env
from tests.worker.test_loop import Harness, WorkerThread, close_harness, make_settings, open_harness


def child_env(settings: Settings) -> dict[str, str]:
    base = {key: value for key, value in os.environ.items() if not key.startswith("SDSERVER_")}
    return base | settings_to_env(settings)


def wait_until(check: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    built = open_harness(make_settings(tmp_path / "data"))
    yield built
    close_harness(built)


def test_settings_round_trip_through_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(
        data_dir=tmp_path.resolve() / "d",
        admin_key="admin-key-0123456789abcdef",
        engines=["test", "upscale"],
        fetch_allowlist=["10.0.0.0/8", "images.internal"],
        job_lease_s=1.5,
        real_status_codes=True,
        storage="local",
        model_import_dirs=[tmp_path.resolve() / "imports"],
        models_dir=tmp_path.resolve() / "shared-models",
        models_in_object_store="yes",
    )
    env = settings_to_env(settings)
    assert env["SDSERVER_ENGINES"] == '["test", "upscale"]'
    assert env["SDSERVER_ADMIN_KEY"] == "admin-key-0123456789abcdef"
    assert "SDSERVER_DATABASE_URL" not in env, "unset optional fields stay unset"
    for key in list(os.environ):
        if key.startswith("SDSERVER_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings() == settings


def test_relative_paths_are_passed_on_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = settings_to_env(Settings(data_dir=Path("rel")))
    assert env["SDSERVER_DATA_DIR"] == str(tmp_path.resolve() / "rel")


def test_a_sigkilled_workers_job_is_finished_by_another_after_its_lease(harness: Harness) -> None:
    job = harness.submit("test-slow", steps=8, step_delay_s=0.1, seed=5)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sdserver.worker.main", "--grace-s=0", "--log-level=warning"],
        env=child_env(harness.settings),
    )
    try:
        harness.wait_for(job.id, lambda job: job.status is JobStatus.RUNNING and job.progress_step >= 2, timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert harness.get(job.id).status is JobStatus.RUNNING
    with WorkerThread(harness):
        done = harness.wait_terminal(job.id)
    assert done.status is JobStatus.SUCCEEDED, done.error_message
    assert done.attempts == 2
    assert [harness.objects.get(key) for key in done.output_keys] == render_output(done).images
    assert harness.output_files() == sorted(done.output_keys)


def test_sigterm_stops_a_worker_process_gracefully(harness: Harness) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sdserver.worker.main", "--log-level=warning"], env=child_env(harness.settings)
    )
    try:
        wait_until(lambda: len(harness.store.live_workers(within_s=60)) == 1, what="the worker to register")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
    assert harness.store.live_workers(within_s=60) == []


def test_run_worker_returns_3_after_a_device_failure(harness: Harness) -> None:
    job = harness.submit("test-crash")
    assert run_worker(harness.settings, worker_id="crashing", grace_s=0) == 3
    assert harness.get(job.id).error_code == "device_failure"


@pytest.mark.parametrize("engines", [["dall-e"], []], ids=["unknown", "none"])
def test_run_worker_refuses_settings_without_a_usable_engine(tmp_path: Path, engines: list[str]) -> None:
    assert run_worker(make_settings(tmp_path / "data", engines=engines)) == 2


def test_supervisor_restarts_a_dead_worker_and_stops_them_all(harness: Harness) -> None:
    supervisor = WorkerSupervisor(harness.settings, 2, env=child_env(harness.settings), grace_s=1.0)
    supervisor.start()
    try:
        wait_until(lambda: len(supervisor.pids()) == 2, what="two workers")
        first = supervisor.pids()
        # Supervised workers run below the API's priority (SDSERVER_WORKER_NICE, default 5).
        own = os.getpriority(os.PRIO_PROCESS, 0)
        wait_until(
            lambda: all(os.getpriority(os.PRIO_PROCESS, pid) == min(19, own + 5) for pid in first), what="nice 5"
        )
        os.kill(first[0], signal.SIGKILL)
        wait_until(lambda: len(set(supervisor.pids()) - set(first)) == 1, what="a replacement worker")
        assert first[1] in supervisor.pids()
        job = harness.submit("test-ok")
        assert harness.wait_terminal(job.id, timeout=20).status is JobStatus.SUCCEEDED
        before = set(supervisor.pids())
        supervisor.restart_all(timeout=10)
        after = set(supervisor.pids())
        assert len(after) == 2 and not after & before
    finally:
        survivors = supervisor.pids()
        supervisor.stop(timeout=10)
    assert supervisor.pids() == []
    for pid in survivors:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
