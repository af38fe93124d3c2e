"""The control channel between API and workers, in SQL: versioned commands, persisted settings, clearing the queue."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from sdserver.config import S3Config
from sdserver.database import metadata, utcnow
from sdserver.jobs import JobStatus, can_transition
from sdserver.jobstore.pg_wakeups import CHANGE_CHANNEL, WORK_CHANNEL, notify
from sdserver.jobstore.tables import jobs, to_db_time

control_commands = sa.Table(
    "control_commands",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    # Bumped by one on every issue; a process reacts to versions above the one it started with.
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
)

server_settings = sa.Table(
    "server_settings",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    # JSON. Secrets are kept as given: every process needs them, and the database already holds the
    # link-signing and webhook secrets; a key stored next to them would protect nothing.
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

STORAGE_SETTING = "storage"
# The model a generation request without `model_id` runs on, set by the first `models make-tiny` (or an operator).
DEFAULT_MODEL_SETTING = "default_model"
# How often a process looks at the command table at most: one tiny indexed read a second per process.
DEFAULT_POLL_S = 1.0


class Command(StrEnum):
    CLEAR_CACHE = "clear_cache"
    RESTART_WORKERS = "restart_workers"
    # The persisted storage settings changed: rebuild the object store from them.
    STORAGE = "storage"


class ControlStore:
    """Commands and settings in the shared SQL database, for every API replica and worker (SQLite and PostgreSQL)."""

    def __init__(self, engine: Engine):
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"

    # --- commands

    def issue(self, command: Command) -> int:
        """Bump the command's version (race-free upsert) and return it; idle PostgreSQL workers wake at once."""
        now = to_db_time(utcnow())
        row = {"name": command.value, "version": 1, "issued_at": now}
        update = {"version": control_commands.c.version + 1, "issued_at": now}
        with self._engine.begin() as conn:
            if self._postgres:
                pg = postgresql.insert(control_commands).values(**row)
                query: Any = pg.on_conflict_do_update(index_elements=[control_commands.c.name], set_=update)
            else:
                lite = sqlite.insert(control_commands).values(**row)
                query = lite.on_conflict_do_update(index_elements=[control_commands.c.name], set_=update)
            version = int(conn.execute(query.returning(control_commands.c.version)).scalar_one())
            if self._postgres:
                notify(conn, WORK_CHANNEL)
        return version

    def versions(self) -> dict[Command, int]:
        """The current version of every command (0: never issued)."""
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(control_commands.c.name, control_commands.c.version)).all()
        known = {row.name: int(row.version) for row in rows}
        return {command: known.get(command.value, 0) for command in Command}

    # --- persisted settings

    def save_storage(self, config: S3Config) -> None:
        self._save(STORAGE_SETTING, asdict(config))

    def load_storage(self) -> S3Config | None:
        value = self._load(STORAGE_SETTING)
        return None if value is None else S3Config(**value)

    def save_default_model(self, model_id: str) -> None:
        self._save(DEFAULT_MODEL_SETTING, {"model_id": model_id})

    def load_default_model(self) -> str | None:
        """The persisted default model id; read per request (one indexed row), so a running server sees a new one."""
        value = self._load(DEFAULT_MODEL_SETTING)
        model_id = None if value is None else value.get("model_id")
        return model_id if isinstance(model_id, str) and model_id else None

    def _save(self, name: str, value: dict[str, Any]) -> None:
        row = {"name": name, "value": json.dumps(value), "updated_at": to_db_time(utcnow())}
        update = {"value": row["value"], "updated_at": row["updated_at"]}
        with self._engine.begin() as conn:
            if self._postgres:
                conn.execute(
                    postgresql.insert(server_settings)
                    .values(**row)
                    .on_conflict_do_update(index_elements=[server_settings.c.name], set_=update)
                )
            else:
                conn.execute(
                    sqlite.insert(server_settings)
                    .values(**row)
                    .on_conflict_do_update(index_elements=[server_settings.c.name], set_=update)
                )

    def _load(self, name: str) -> dict[str, Any] | None:
        with self._engine.connect() as conn:
            text = conn.execute(sa.select(server_settings.c.value).where(server_settings.c.name == name)).scalar()
        if text is None:
            return None
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError(f"server setting {name!r} is not a JSON object")
        return value

    # --- the queue

    def cancel_queued(self, *, owner_key_id: int | None) -> list[int]:
        """Cancel every queued job (of one key, or of all keys for None); running jobs are left alone."""
        if not can_transition(JobStatus.QUEUED, JobStatus.CANCELLED):
            raise ValueError("queued jobs cannot be cancelled")
        query = sa.update(jobs).where(jobs.c.status == JobStatus.QUEUED.value)
        if owner_key_id is not None:
            query = query.where(jobs.c.owner_key_id == owner_key_id)
        query = query.values(status=JobStatus.CANCELLED.value, finished_at=to_db_time(utcnow()))
        with self._engine.begin() as conn:
            ids = sorted(int(job_id) for job_id in conn.execute(query.returning(jobs.c.id)).scalars())
            if self._postgres:
                # Requests waiting on these jobs answer at once instead of at their timeout.
                for job_id in ids:
                    notify(conn, CHANGE_CHANNEL, str(job_id))
        return ids


class CommandWatcher:
    """One process's view of the commands: which were issued since it started (or last looked).

    The baseline is read at construction, so a worker started after a `restart_workers` does not restart again.
    """

    def __init__(
        self, control: ControlStore, *, poll_s: float = DEFAULT_POLL_S, clock: Callable[[], float] = time.monotonic
    ):
        self._control = control
        self._poll_s = poll_s
        self._clock = clock
        self._seen = control.versions()
        self._last_poll = clock()

    def poll(self, *, force: bool = False) -> set[Command]:
        """Commands issued since the last call; reads the database at most every `poll_s` unless forced."""
        now = self._clock()
        if not force and now - self._last_poll < self._poll_s:
            return set()
        self._last_poll = now
        current = self._control.versions()
        fresh = {command for command, version in current.items() if version > self._seen.get(command, 0)}
        self._seen = current
        return fresh
