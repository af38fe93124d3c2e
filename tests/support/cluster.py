"""Real sdserver processes for whole-system tests: start/stop them, submit test-engine jobs, wait for results."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ADMIN_KEY = "topology-admin-key-0123456789"
SDSERVER = [sys.executable, "-m", "sdserver.cli"]


class Cluster:
    """Processes started by a test, stopped (SIGTERM, then SIGKILL) when it ends."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{len(self.processes)}-{args[0]}.log", "wb") as log:
            process = subprocess.Popen([*SDSERVER, *args], env=env, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                self.stop(process)


def cluster_env(data_dir: Path, port: int, **settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDSERVER_")}
    env.update(
        {
            "SDSERVER_DATA_DIR": str(data_dir),
            "SDSERVER_PORT": str(port),
            "SDSERVER_ADMIN_KEY": ADMIN_KEY,
            "SDSERVER_ENGINES": "test",
            "SDSERVER_JOB_LEASE_S": "3",
            "SDSERVER_WORKER_POLL_S": "0.05",
        }
    )
    env.update({f"SDSERVER_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def wait_ready(base_url: str, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(base_url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become ready")


def submit_many(base_url: str, count: int, **fields: Any) -> list[dict[str, Any]]:
    body = {
        "key": ADMIN_KEY,
        "prompt": "p",
        "model_id": "test-slow",
        "width": 64,
        "height": 64,
        "num_inference_steps": 3,
        "instant_response": "yes",
        **fields,
    }
    replies = [httpx.post(base_url + "/api/v1/enterprise/text2img", json=body, timeout=30).json() for _ in range(count)]
    assert all(reply["status"] == "processing" for reply in replies), replies
    return replies


def wait_all_success(base_url: str, ids: list[int], timeout: float = 120) -> dict[int, dict[str, Any]]:
    done: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(ids) and time.monotonic() < deadline:
        for job_id in ids:
            if job_id in done:
                continue
            reply = httpx.post(
                f"{base_url}/api/v1/enterprise/fetch/{job_id}", json={"key": ADMIN_KEY}, timeout=30
            ).json()
            assert reply["status"] in ("processing", "success"), reply
            if reply["status"] == "success":
                done[job_id] = reply
        time.sleep(0.2)
    assert len(done) == len(ids), f"{len(ids) - len(done)} jobs did not finish"
    return done


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    processes = Cluster(tmp_path)
    yield processes
    processes.stop_all()
