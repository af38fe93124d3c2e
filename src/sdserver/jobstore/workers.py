"""The worker registry: which worker processes are alive, on what device, with which engines and loaded models."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from sdserver.jobstore.tables import dump_json, load_strings, stored_time, workers


@dataclass(frozen=True)
class WorkerInfo:
    worker_id: str
    device: str
    engines: tuple[str, ...]
    held_models: tuple[str, ...]
    last_seen: datetime


def upsert_worker(conn: Connection, worker_id: str, update: dict[str, Any], **insert_only: Any) -> None:
    """Insert the worker's row, or update `update`'s columns if it exists (one statement, race-free)."""
    row = {"worker_id": worker_id, **insert_only, **update}
    if conn.dialect.name == "sqlite":
        lite = sqlite.insert(workers).values(**row)
        conn.execute(lite.on_conflict_do_update(index_elements=[workers.c.worker_id], set_=update))
    else:
        pg = postgresql.insert(workers).values(**row)
        conn.execute(pg.on_conflict_do_update(index_elements=[workers.c.worker_id], set_=update))


def workers_seen_since(conn: Connection, since: datetime) -> list[WorkerInfo]:
    query = sa.select(workers).where(workers.c.last_seen >= since).order_by(workers.c.worker_id)
    return [
        WorkerInfo(
            worker_id=row.worker_id,
            device=row.device,
            engines=load_strings(row.engines),
            held_models=load_strings(row.held_models),
            last_seen=stored_time(row.last_seen),
        )
        for row in conn.execute(query)
    ]


def models_held_by_peers(conn: Connection, worker_id: str, since: datetime) -> set[str]:
    """Models loaded in the other workers seen since `since` (claims spread over them, see jobstore.claims)."""
    query = sa.select(workers.c.held_models).where(workers.c.last_seen >= since, workers.c.worker_id != worker_id)
    return {model for held in conn.execute(query).scalars() for model in load_strings(held)}


def note_held_models(conn: Connection, worker_id: str, held_models: Collection[str]) -> None:
    """Record what a worker holds (or is about to load) without waiting for its next heartbeat; no row, no-op."""
    conn.execute(
        sa.update(workers).where(workers.c.worker_id == worker_id).values(held_models=dump_json(sorted(held_models)))
    )
