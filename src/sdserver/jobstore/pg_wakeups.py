"""Wake-ups for the job store: PostgreSQL LISTEN/NOTIFY through one listener thread; short sleeps on SQLite."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict

import sqlalchemy as sa
from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)

# "a job may be claimable" (submit, release, requeue); payload unused.
WORK_CHANNEL = "sdserver_jobs"
# "this job changed" (ended, cancelled, re-queued); payload is the job id.
CHANGE_CHANNEL = "sdserver_job_changes"

# How long a change nobody was waiting for still counts as news for the next waiter on that job: it
# covers the gap between a caller reading the job and starting to wait.
_UNCLAIMED_CHANGE_S = 5.0
_UNCLAIMED_CHANGE_LIMIT = 4096
# How long the listener blocks in one poll; also the most `close()` waits for it.
_LISTEN_POLL_S = 0.25
_RECONNECT_DELAY_S = 1.0


def notify(conn: Connection, channel: str, payload: str = "") -> None:
    """Queue a PostgreSQL notification; it is sent when (and only if) the transaction commits."""
    conn.execute(sa.select(sa.func.pg_notify(channel, payload)))


class PgWakeups:
    """One LISTEN connection per store, read by a daemon thread that wakes the threads blocked in `wait_*`.

    A notification that arrives while nobody waits is kept, so a waiter that starts just after it still
    returns at once: a worker that found no work, or an API request that just read its job, loses no wake-up.
    """

    def __init__(self, dsn: str):
        self._dsn = dsn
        self._cond = threading.Condition()
        self._work_seq = 0
        self._work_pending = False
        self._change_seq: dict[int, int] = {}
        self._watchers: Counter[int] = Counter()
        self._unclaimed: OrderedDict[int, float] = OrderedDict()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def wait_for_work(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        self._ensure_listening(deadline)
        with self._cond:
            if not self._work_pending:
                seq = self._work_seq
                self._cond.wait_for(lambda: self._work_seq != seq, max(0.0, deadline - time.monotonic()))
            self._work_pending = False

    def wait_for_job_change(self, job_id: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        self._ensure_listening(deadline)
        with self._cond:
            seen_at = self._unclaimed.pop(job_id, None)
            if seen_at is not None and time.monotonic() - seen_at < _UNCLAIMED_CHANGE_S:
                return
            self._watchers[job_id] += 1
            start = self._change_seq.setdefault(job_id, 0)
            try:
                self._cond.wait_for(lambda: self._change_seq[job_id] != start, max(0.0, deadline - time.monotonic()))
            finally:
                self._watchers[job_id] -= 1
                if self._watchers[job_id] <= 0:
                    del self._watchers[job_id]
                    del self._change_seq[job_id]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=_LISTEN_POLL_S * 8)

    def _ensure_listening(self, deadline: float) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sdserver-store-listen", daemon=True)
                self._thread.start()
        # Waiting for LISTEN to be in place means a notification sent after this call is not missed.
        self._ready.wait(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        # Here, not at the top: a SQLite-only process (the default) never pays for importing the driver.
        import psycopg

        connected_before = False
        failing = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=10) as conn:
                    conn.execute("LISTEN sdserver_jobs")
                    conn.execute("LISTEN sdserver_job_changes")
                    if connected_before:
                        # Notifications sent while we were disconnected are gone: tell every waiter to look.
                        self._wake_everyone()
                    connected_before, failing = True, False
                    self._ready.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=_LISTEN_POLL_S):
                            self._dispatch(note.channel, note.payload)
            except psycopg.Error as error:
                # Waiters fall back to their timeouts (polling) until the database is reachable again.
                if not failing and not self._stop.is_set():
                    log.warning("job store wake-ups unavailable, retrying every %.0f s: %s", _RECONNECT_DELAY_S, error)
                failing = True
                self._stop.wait(_RECONNECT_DELAY_S)

    def _dispatch(self, channel: str, payload: str) -> None:
        with self._cond:
            if channel == WORK_CHANNEL:
                self._work_seq += 1
                self._work_pending = True
            elif channel == CHANGE_CHANNEL and payload.isdigit():
                self._job_changed(int(payload))
            self._cond.notify_all()

    def _job_changed(self, job_id: int) -> None:
        if job_id in self._change_seq:
            self._change_seq[job_id] += 1
            return
        self._unclaimed[job_id] = time.monotonic()
        self._unclaimed.move_to_end(job_id)
        while len(self._unclaimed) > _UNCLAIMED_CHANGE_LIMIT:
            self._unclaimed.popitem(last=False)

    def _wake_everyone(self) -> None:
        with self._cond:
            self._work_seq += 1
            self._work_pending = True
            for job_id in self._change_seq:
                self._change_seq[job_id] += 1
            self._cond.notify_all()
