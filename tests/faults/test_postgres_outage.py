"""PostgreSQL stopped and restarted under load: clear 503s meanwhile, then every job done exactly once."""

from __future__ import annotations

import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from sdserver.auth import Role
from sdserver.jobstore.pg_wakeups import WORK_CHANNEL, PgWakeups, notify
from sdserver.worker.main import run_worker
from tests.support.cluster import ADMIN_KEY, Cluster, cluster, cluster_env, submit_many, wait_all_success, wait_ready
from tests.support.http_host import HttpHost, Reply
from tests.support.live_server import free_port, make_settings, run_server
from tests.support.postgres_server import RestartablePostgres, fresh_database, start_restartable_postgres

__all__ = ["cluster"]  # pytest fixture, imported for the test below

# Long enough that the outage (a few seconds) outlasts a heartbeat (lease/3) but not a lease: no job may be
# re-run, so "exactly once" means one attempt each.
LEASE_S = 9.0
JOBS = 10


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[RestartablePostgres]:
    """A server only this module stops: the session-wide one stays up for every other test."""
    # Not under pytest's basetemp: a pytest run that starts meanwhile makes that 0700 again, and pg_ctl (run as
    # the server's own user when tests run as root) could no longer reach the data directory.
    with (
        tempfile.TemporaryDirectory(prefix="sdserver-pg-outage-") as workdir,
        start_restartable_postgres(Path(workdir)) as server,
    ):
        yield server


@pytest.fixture
def pg(own_postgres: RestartablePostgres) -> Iterator[RestartablePostgres]:
    yield own_postgres
    if not own_postgres.running():  # a failed test must not leave the next one without a database
        own_postgres.start()


def wait_until(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def assert_store_unavailable(response: httpx.Response, status: int = 503) -> None:
    """The ModelsLab error envelope with the outage's code: never a 500, never a hang."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "error"
    assert body["error_code"] == "store_unavailable"
    assert "database is unavailable" in body["message"]


@pytest.mark.parametrize("real_status_codes", [True, False])
def test_api_answers_503_store_unavailable_while_postgresql_is_down(
    tmp_path: Path, pg: RestartablePostgres, real_status_codes: bool
) -> None:
    # ModelsLab clients give up on any non-200, so by default the envelope alone says "error" (the contract).
    status = 503 if real_status_codes else 200
    settings = make_settings(tmp_path, database_url=fresh_database(pg.url), real_status_codes=real_status_codes)
    with run_server(settings) as live, httpx.Client(timeout=10, trust_env=False) as http:
        key = live.new_key(Role.USER)
        pg.stop()
        started = time.monotonic()
        assert_store_unavailable(http.post(live.url("/api/v6/images/fetch/1"), json={"key": key}), status)
        body = {"key": key, "prompt": "p", "model_id": "test-ok", "width": 64, "height": 64}
        assert_store_unavailable(http.post(live.url("/api/v6/realtime/text2img"), json=body), status)
        stablecog = http.post(live.url("/v1/image/upload"), headers={"Authorization": f"Bearer {key}"})
        assert stablecog.status_code == 503
        assert stablecog.json()["error"] == "store_unavailable"
        health = http.get(live.url("/healthz"))
        assert (health.status_code, health.json()["database"]) == (503, "unreachable")
        assert time.monotonic() - started < 5, "replies during the outage must be prompt"

        pg.start()
        # The pool's stale connections are replaced (pre-ping): the same key works again at once.
        reply = http.post(live.url("/api/v6/images/fetch/999999"), json={"key": key})
        assert (reply.status_code, reply.json()["message"]) == (404 if real_status_codes else 200, "Request not found")


def test_wakeup_listener_falls_back_to_polling_then_reconnects(pg: RestartablePostgres) -> None:
    url = fresh_database(pg.url)
    engine = sa.create_engine(url, pool_pre_ping=True)
    wakeups = PgWakeups(sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))

    def woken_by_notify() -> float:
        """Seconds until a waiter with a 30 s timeout wakes while NOTIFYs are sent: well under 30 if heard."""
        started = time.monotonic()
        waiter = threading.Thread(target=wakeups.wait_for_work, args=(30,), daemon=True)
        waiter.start()
        while waiter.is_alive() and time.monotonic() - started < 30:
            with engine.begin() as conn:
                notify(conn, WORK_CHANNEL)
            waiter.join(0.1)
        return time.monotonic() - started

    try:
        assert woken_by_notify() < 10
        pg.stop()
        # Down: a wait is a plain sleep of its timeout (the worker polls), never an exception or a hang.
        started = time.monotonic()
        wakeups.wait_for_work(0.3)
        assert 0.25 <= time.monotonic() - started < 3
        pg.start()
        # Up again: the listener reconnects by itself and NOTIFYs get through again, twice in a row.
        assert woken_by_notify() < 10
        assert woken_by_notify() < 10
    finally:
        wakeups.close()
        engine.dispose()


def test_worker_started_while_postgresql_is_down_waits_for_it(tmp_path: Path, pg: RestartablePostgres) -> None:
    database_url = fresh_database(pg.url)
    settings = make_settings(tmp_path, database_url=database_url, engines=["test"])
    pg.stop()
    stop = threading.Event()
    exit_codes: list[int] = []
    worker = threading.Thread(target=lambda: exit_codes.append(run_worker(settings, stop=stop)), daemon=True)
    worker.start()
    db = sa.create_engine(database_url, pool_pre_ping=True)
    try:
        time.sleep(0.5)  # the worker meets the outage at start-up (its first attempt fails at once)
        assert worker.is_alive(), "a worker must not crash when the database is down at start-up"
        pg.start()

        def registered() -> bool:
            with db.connect() as conn:
                if not sa.inspect(conn).has_table("workers"):  # the worker creates the schema once connected
                    return False
                return int(conn.execute(sa.text("SELECT count(*) FROM workers")).scalar_one()) == 1

        wait_until("the worker to register once the database is back", registered, 20)
    finally:
        stop.set()
        worker.join(20)
        db.dispose()
    assert exit_codes == [0]


def test_jobs_survive_a_postgresql_restart_exactly_once(
    tmp_path: Path, cluster: Cluster, pg: RestartablePostgres
) -> None:
    database_url = fresh_database(pg.url)
    db = sa.create_engine(database_url, pool_pre_ping=True)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    settings = {"database_url": database_url, "real_status_codes": "true", "fetch_allowlist": "127.0.0.1"}
    env = cluster_env(tmp_path / "data", port, job_lease_s=LEASE_S, **settings)
    cluster.start(env, "serve", "--workers", "0")
    wait_ready(base_url)
    workers = [cluster.start(env, "worker") for _ in range(2)]

    def count(sql: str, **params: object) -> int:
        with db.connect() as conn:
            return int(conn.execute(sa.text(sql), params).scalar_one())

    wait_until("both workers registered", lambda: count("SELECT count(*) FROM workers") == 2, 60)
    # 5 steps of 0.2 s: about 1 s a job, so the outage comes while some run and others still wait.
    ids = [reply["id"] for reply in submit_many(base_url, JOBS, num_inference_steps=5)]
    wait_until("a job running", lambda: count("SELECT count(*) FROM jobs WHERE status = 'running'") > 0, 30)
    queued_at_outage = count("SELECT count(*) FROM jobs WHERE status = 'queued'")

    pg.stop()
    down_at = time.monotonic()
    started = time.monotonic()
    fetch = httpx.post(f"{base_url}/api/v1/enterprise/fetch/{ids[0]}", json={"key": ADMIN_KEY}, timeout=10)
    assert_store_unavailable(fetch)
    submit = {"key": ADMIN_KEY, "prompt": "p", "model_id": "test-slow", "width": 64, "height": 64}
    assert_store_unavailable(httpx.post(f"{base_url}/api/v1/enterprise/text2img", json=submit, timeout=10))
    assert time.monotonic() - started < 5, "replies during the outage must be prompt"

    # Down for longer than a heartbeat: every worker has seen a heartbeat fail before the database returns.
    logs = sorted(tmp_path.glob("*-worker.log"))

    def heartbeats_failed() -> bool:
        return all("heartbeat failed (database unavailable)" in log.read_text(errors="replace") for log in logs)

    wait_until("a failed heartbeat in every worker", heartbeats_failed, LEASE_S)
    wait_until("one heartbeat interval", lambda: time.monotonic() - down_at > LEASE_S / 3, LEASE_S)
    pg.start()
    outage_s = time.monotonic() - down_at
    up_at = datetime.now(UTC)
    assert outage_s < LEASE_S, f"the outage ({outage_s:.1f} s) outlasted a lease; this test needs it shorter"

    finished = wait_all_success(base_url, ids, timeout=40)
    for reply in finished.values():
        assert httpx.get(reply["output"][0], timeout=10).content.startswith(b"\x89PNG")
    # Submitted after the restart: a worker must still be woken (NOTIFY, or its poll) and claim it, and the
    # API's webhook sender, which failed its passes during the outage, must still deliver.
    with HttpHost({"/hook": Reply(b"ok")}) as receiver:
        late = submit_many(base_url, 1, webhook=receiver.url("/hook"))[0]["id"]
        wait_all_success(base_url, [late], timeout=20)
        wait_until(
            "the webhook of the job submitted after the restart", lambda: bool(receiver.requests_to("/hook")), 20
        )

    with db.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, status, attempts FROM jobs ORDER BY id")).all()
    assert [(row.id, row.status, row.attempts) for row in rows] == [(i, "succeeded", 1) for i in [*ids, late]]
    # Both heartbeat threads outlived the outage: each worker beat again after the restart.
    with db.connect() as conn:
        seen = conn.execute(sa.text("SELECT last_seen FROM workers")).scalars().all()
    assert len(seen) == 2
    wait_until(
        "a heartbeat from each worker after the restart",
        lambda: count("SELECT count(*) FROM workers WHERE last_seen > :t", t=up_at) == 2,
        LEASE_S,
    )
    assert all(worker.poll() is None for worker in workers), "no worker may exit over a database outage"
    api_log = next(tmp_path.glob("0-serve.log")).read_text(errors="replace")
    assert "unhandled error" not in api_log
    worker_logs = "".join(log.read_text(errors="replace") for log in logs)
    beats = worker_logs.count("heartbeat failed (database unavailable)")
    retries = len(re.findall(r"failed \(database unavailable\), retrying", worker_logs))
    print(f"\noutage {outage_s:.1f} s; {JOBS} jobs, {queued_at_outage} still queued at the outage;")
    print(f"worker logs: {beats} failed heartbeats, {retries} claim/settle retries")
    db.dispose()
