"""The SQL schema and engine set-up shared by every store: SQLite (WAL) by default, PostgreSQL for many hosts."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Engine

metadata = sa.MetaData()

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    # SHA-256 of the whole key: keys are 256-bit random tokens, so a fast hash is enough (no dictionary to guess).
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    # The first characters of the key, shown in listings so people can tell keys apart.
    sa.Column("key_prefix", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)

uploads = sa.Table(
    "uploads",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("owner_key_id", sa.Integer, sa.ForeignKey("api_keys.id"), nullable=False, index=True),
    sa.Column("object_key", sa.String(300), nullable=False, unique=True),
    sa.Column("content_type", sa.String(64), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
)

server_state = sa.Table(
    "server_state",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


# What SQLAlchemy raises when the database is down, restarting or out of connections (not a bug in a query):
# workers retry these, the API answers `store_unavailable`.
DATABASE_OUTAGES: Final = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)

_POOL_SIZE = 20
_POOL_OVERFLOW = 40


def utcnow() -> datetime:
    return datetime.now(UTC)


def create_db_engine(url: str) -> Engine:
    """Build the engine for a SQLite file or a PostgreSQL URL and make sure the schema exists."""
    if url.startswith("postgresql://"):
        # Plain postgresql:// would pick psycopg2, which we do not ship; psycopg 3 is the driver.
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    # The API runs handlers on up to 40 threads: a pool smaller than that would open and close a connection (and
    # on SQLite re-run its PRAGMAs) for every request beyond it.
    kwargs: dict[str, Any] = {"future": True, "pool_size": _POOL_SIZE, "max_overflow": _POOL_OVERFLOW}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        # A server restart leaves dead connections in the pool; a ping on checkout replaces them. A SQLite file
        # cannot go away like that, and the ping would cost a query per checkout.
        kwargs["pool_pre_ping"] = True
    engine = sa.create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Several API replicas and workers start at once; serialise the CREATE TABLEs between them.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(740233)"))
        metadata.create_all(conn)
        add_missing_columns(conn)
    return engine


def add_missing_columns(conn: sa.Connection) -> list[str]:
    """Add the nullable columns a newer build declares to tables an older build created; returns `table.column`
    for each one added. create_all only creates missing tables, and a column added later must not need a manual
    migration; existing rows read NULL there (unknown), which every reader of such a column accepts."""
    inspector = sa.inspect(conn)
    added: list[str] = []
    for table in metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                # A NOT NULL column needs a value for old rows: that is a real migration, not this one.
                raise RuntimeError(f"{table.name}.{column.name} is missing and NOT NULL; migrate the database")
            kind = column.type.compile(dialect=conn.dialect)
            preparer = conn.dialect.identifier_preparer
            conn.execute(
                sa.text(f"ALTER TABLE {preparer.quote(table.name)} ADD COLUMN {preparer.quote(column.name)} {kind}")
            )
            added.append(f"{table.name}.{column.name}")
    return added


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes; busy_timeout turns lock contention into a short wait.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def server_secret(engine: Engine, name: str) -> bytes:
    """A random secret kept in the database, created once and shared by every process using it."""
    candidate = secrets.token_hex(32)
    with engine.begin() as conn:
        row = conn.execute(sa.select(server_state.c.value).where(server_state.c.name == name)).first()
        if row is None:
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(server_state).values(name=name, value=candidate))
            except sa.exc.IntegrityError:
                pass  # another process created it first; read theirs below
            row = conn.execute(sa.select(server_state.c.value).where(server_state.c.name == name)).one()
    return bytes.fromhex(row[0])
