"""SQLite wake-ups: a commit from another connection or process wakes every waiter; no commit, no wake-up."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sdserver.database import create_db_engine
from sdserver.jobstore import sqlite_wakeups
from sdserver.jobstore.sqlite_wakeups import SqliteChangeWatch


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    return tmp_path / "watch.db"


@pytest.fixture
def engine(db_file: Path) -> Iterator[Engine]:
    engine = create_db_engine(f"sqlite:///{db_file}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE marks (n INTEGER)")
    yield engine
    engine.dispose()


def _commit(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO marks VALUES (1)"))


def _timed_wait(watch: SqliteChangeWatch, timeout_s: float, took: list[float]) -> None:
    started = time.monotonic()
    watch.wait(timeout_s)
    took.append(time.monotonic() - started)


def test_fifty_waiters_all_wake_on_one_commit_from_another_engine(engine: Engine, db_file: Path) -> None:
    watch = SqliteChangeWatch(engine)
    took: list[float] = []
    threads = [threading.Thread(target=_timed_wait, args=(watch, 10.0, took)) for _ in range(50)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # all are waiting
    other = create_db_engine(f"sqlite:///{db_file}")
    _commit(other)
    other.dispose()
    for thread in threads:
        thread.join(timeout=15)
    watch.close()
    assert len(took) == 50
    assert max(took) < 3.0, "a commit must wake the waiters long before their 10 s timeout"


def test_a_commit_from_another_process_wakes_a_waiter(engine: Engine, db_file: Path) -> None:
    watch = SqliteChangeWatch(engine)
    took: list[float] = []
    waiter = threading.Thread(target=_timed_wait, args=(watch, 20.0, took))
    waiter.start()
    insert = "c.execute('INSERT INTO marks VALUES (2)'); c.commit()"
    code = f"import sqlite3; c = sqlite3.connect({str(db_file)!r}); {insert}"
    subprocess.run([sys.executable, "-c", code], check=True)
    waiter.join(timeout=25)
    watch.close()
    assert took and took[0] < 10.0


def test_without_a_commit_the_wait_lasts_its_timeout(engine: Engine) -> None:
    watch = SqliteChangeWatch(engine)
    took: list[float] = []
    _timed_wait(watch, 0.4, took)
    watch.close()
    assert took[0] >= 0.39


def test_the_watcher_ends_when_idle_and_a_new_waiter_starts_it_again(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_wakeups, "IDLE_EXIT_S", 0.1)
    watch = SqliteChangeWatch(engine)
    watch.wait(0.05)
    deadline = time.monotonic() + 5
    while any(t.name == "sqlite-change-watch" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(t.name == "sqlite-change-watch" for t in threading.enumerate())

    took: list[float] = []
    waiter = threading.Thread(target=_timed_wait, args=(watch, 10.0, took))
    waiter.start()
    time.sleep(0.2)
    _commit(engine)
    waiter.join(timeout=15)
    watch.close()
    assert took and took[0] < 3.0
