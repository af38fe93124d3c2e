"""Wake-ups on SQLite: one thread per process watches `PRAGMA data_version` and wakes every waiter on a commit."""

from __future__ import annotations

import threading
import time
from typing import Final

from sqlalchemy.engine import Connection, Engine

# How often the watcher looks while someone waits. A look is one PRAGMA on an open connection (microseconds),
# so a waiter learns of a commit within this time, and 50 waiters cost what one does.
WATCH_INTERVAL_S: Final = 0.025
# A watcher with nobody waiting this long ends (a worker busy on one long job, an idle API).
IDLE_EXIT_S: Final = 5.0


class SqliteChangeWatch:
    """Lets any number of threads wait for "the database changed" at the cost of one poller.

    PostgreSQL has LISTEN/NOTIFY; SQLite has no cross-process signal, so each waiter used to re-read its row
    every few milliseconds. `PRAGMA data_version` changes whenever another connection (of this process or any
    other) commits, which is all a waiter needs to know before it re-reads. The watcher thread only runs while
    someone waits.
    """

    def __init__(self, engine: Engine, interval_s: float = WATCH_INTERVAL_S) -> None:
        self._engine = engine
        self._interval_s = interval_s
        self._changed = threading.Condition()
        self._generation = 0
        self._waiters = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    def wait(self, timeout_s: float) -> None:
        """Return after the next commit by another connection, or after `timeout_s`."""
        if timeout_s <= 0:
            return
        deadline = time.monotonic() + timeout_s
        with self._changed:
            if self._closed:
                time.sleep(min(timeout_s, self._interval_s))
                return
            self._start_locked()
            seen = self._generation
            self._waiters += 1
            self._changed.notify_all()  # the watcher may be parked with nobody to watch for
            try:
                while self._generation == seen and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    self._changed.wait(remaining)
            finally:
                self._waiters -= 1

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    def _start_locked(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="sqlite-change-watch", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        with self._engine.connect() as conn:
            # Outside any transaction, or the PRAGMA would read one snapshot for ever.
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            last = _data_version(conn)
            while True:
                with self._changed:
                    if self._waiters == 0 and not self._closed:
                        self._changed.wait(IDLE_EXIT_S)
                    if self._closed or self._waiters == 0:
                        # Nobody waiting for a while: give the connection back; the next waiter starts a new watcher.
                        self._thread = None
                        return
                time.sleep(self._interval_s)
                try:
                    version = _data_version(conn)
                except Exception:
                    version = last + 1
                if version != last:
                    last = version
                    with self._changed:
                        self._generation += 1
                        self._changed.notify_all()


def _data_version(conn: Connection) -> int:
    return int(conn.exec_driver_sql("PRAGMA data_version").scalar_one())
