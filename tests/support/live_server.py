"""Runs the real app under uvicorn on a free loopback port in a background thread, for HTTP-level tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import uvicorn

from sdserver.api.app import create_app
from sdserver.api.services import Services
from sdserver.auth import Role
from sdserver.config import Settings
from sdserver.engines.base import Engine
from sdserver.jobstore.tables import jobs
from sdserver.worker.loop import Worker


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test server: its own data dir and port, nothing read from the environment."""
    values: dict[str, Any] = {"data_dir": data_dir, "host": "127.0.0.1", "port": free_port()}
    values.update(overrides)
    return Settings.model_validate(values)


@dataclass
class LiveServer:
    base_url: str
    services: Services

    def url(self, path: str) -> str:
        return self.base_url + path

    def new_key(self, role: Role = Role.USER, name: str = "test") -> str:
        return self.services.keys.create(name, role)[1]

    def job_count(self) -> int:
        """Job rows of every kind and state: what a request refused at submit must leave unchanged."""
        with self.services.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one())


@contextmanager
def run_server(settings: Settings) -> Iterator[LiveServer]:
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield LiveServer(base_url=settings.external_base_url, services=app.state.services)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        app.state.services.engine.dispose()


@contextmanager
def worker_thread(live: LiveServer, engines: list[Engine], worker_id: str, join_s: float = 15.0) -> Iterator[None]:
    """A real worker loop on the live server's store, in a background thread, stopped on exit."""
    services = live.services
    worker = Worker(services.settings, services.jobs, services.objects, engines, worker_id)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=join_s)
