"""A worker process: builds its stores and engines from the settings and works until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import TypeVar

from sqlalchemy.engine import Engine as DbEngine

from sdserver.config import Settings
from sdserver.database import DATABASE_OUTAGES, create_db_engine, server_secret
from sdserver.engines.base import Engine
from sdserver.engines.factory import build_engines
from sdserver.jobstore.control import CommandWatcher, ControlStore
from sdserver.logs import LOG_FORMATS, configure_logging
from sdserver.objects.switching import SwitchingObjectStore, follow_storage, open_switching_store
from sdserver.worker.batching import worker_max_batch
from sdserver.worker.control import WorkerControl
from sdserver.worker.loop import EXIT_OK, Worker, backoff_delay

log = logging.getLogger(__name__)

EXIT_CONFIG_ERROR = 2
_T = TypeVar("_T")
# How often a supervised worker checks that its supervisor is still alive.
PARENT_CHECK_S = 1.0


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def signing_secret_for(settings: Settings, engine: DbEngine) -> bytes:
    return (
        settings.signing_secret.get_secret_value().encode()
        if settings.signing_secret
        else server_secret(engine, "link_signing")
    )


def build_object_store(settings: Settings, engine: DbEngine) -> SwitchingObjectStore:
    """The same store the API builds: same folder or bucket (a persisted update_s3 setting first), same secret."""
    return open_switching_store(settings, ControlStore(engine), signing_secret=signing_secret_for(settings, engine))


def build_control(
    settings: Settings, engine: DbEngine, objects: SwitchingObjectStore, engines: Sequence[Engine]
) -> WorkerControl:
    """The worker's end of the control channel: commands issued from now on reach it between jobs."""
    control = ControlStore(engine)
    secret = signing_secret_for(settings, engine)
    return WorkerControl(
        CommandWatcher(control),
        engines,
        reload_storage=lambda: follow_storage(objects, settings, control, signing_secret=secret),
    )


def run_worker(
    settings: Settings,
    *,
    worker_id: str | None = None,
    grace_s: float = 30.0,
    stop: threading.Event | None = None,
) -> int:
    """Run one worker until stopped: 0 after a graceful stop, 3 after a device failure, 4 when a restart was
    requested (restart_server), 2 on bad settings."""
    # Imported here so importing this module (e.g. for `settings_to_env`) does not need the job store yet.
    from sdserver.jobstore.store import JobStore

    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    stop = stop or threading.Event()
    db = _until_database_answers("connect to the job database", lambda: create_db_engine(settings.sql_url), stop)
    if db is None:
        return EXIT_OK
    objects = _until_database_answers("open the object store", lambda: build_object_store(settings, db), stop)
    if objects is None:
        db.dispose()
        return EXIT_OK
    try:
        engines = build_engines(settings, objects)
    except ValueError as exc:
        log.error("%s", exc)
        db.dispose()
        return EXIT_CONFIG_ERROR
    if not engines:
        log.error("no engine to run: settings.engines names none that is available (%s)", settings.engines)
        db.dispose()
        return EXIT_CONFIG_ERROR
    jobs = JobStore(db)
    try:
        control = _until_database_answers(
            "read the control commands", lambda: build_control(settings, db, objects, engines), stop
        )
        if control is None:
            return EXIT_OK
        worker = Worker(
            settings,
            jobs,
            objects,
            engines,
            worker_id or make_worker_id(),
            grace_s=grace_s,
            control=control,
            max_batch=worker_max_batch(settings.max_batch, engines),
            batch_window_s=settings.batch_window_ms / 1000,
        )
        with _stop_on_signals(stop):
            return worker.run(stop)
    finally:
        jobs.close()
        db.dispose()


def _until_database_answers(what: str, action: Callable[[], _T], stop: threading.Event) -> _T | None:
    """Run a start-up step, waiting out a database that is down or restarting; None if stopped meanwhile."""
    failures = 0
    while True:
        try:
            return action()
        except DATABASE_OUTAGES as exc:
            # Crashing here would lose the worker for good when nothing restarts it (a plain `sdserver worker`).
            failures += 1
            delay = backoff_delay(failures)
            log.warning("could not %s (database unavailable), retrying in %.1f s: %s", what, delay, _first_line(exc))
            if stop.wait(delay):
                return None


def _first_line(exc: BaseException) -> str:
    return str(exc).partition("\n")[0]


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set `stop` (graceful); handlers can only be installed from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping after the current job", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _watch_parent(parent_pid: int, stop: threading.Event) -> None:
    """A supervised worker stops when its supervisor dies, so a killed `serve` leaves no orphans holding GPUs."""
    while not stop.wait(PARENT_CHECK_S):
        if os.getppid() != parent_pid:
            log.warning("supervisor (pid %s) is gone; stopping", parent_pid)
            stop.set()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdserver.worker.main", description="Run one sdserver worker.")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="text", choices=LOG_FORMATS)
    parser.add_argument("--worker-id", help="unique id of this worker (default host:pid:random)")
    parser.add_argument("--grace-s", type=float, default=30.0, help="how long a stop waits for the running job")
    parser.add_argument("--parent-pid", type=int, help="stop when this process (the supervisor) is gone")
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    stop = threading.Event()
    settings = Settings()
    if args.parent_pid is not None:
        threading.Thread(target=_watch_parent, args=(args.parent_pid, stop), daemon=True).start()
        # Before torch starts its threads, which inherit it.
        os.nice(settings.worker_nice)
    return run_worker(settings, worker_id=args.worker_id, grace_s=args.grace_s, stop=stop)


if __name__ == "__main__":
    raise SystemExit(main())
