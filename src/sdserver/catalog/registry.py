"""The model registry: one SQL row per model loaded through the API (kind, id, state, source, download progress)."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sdserver.catalog.families.kinds import FamilyInfo, FewStep, ModelFamily, PredictionType
from sdserver.database import metadata, utcnow
from sdserver.errors import ValidationError
from sdserver.jobs import JobStatus
from sdserver.jobstore.tables import from_db_time, jobs, stored_time, to_db_time


class ModelKind(StrEnum):
    """What a model is; decides where its files go under `<data_dir>/models/`."""

    CHECKPOINT = "checkpoint"
    LORA = "lora"
    VAE = "vae"
    EMBEDDINGS = "embeddings"
    CONTROLNET = "controlnet"
    UPSCALER = "upscaler"


class ModelState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


models = sa.Table(
    "models",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("model_id", sa.String(128), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    # The URL, hub id or local path as the operator gave it; URLs with credentials are refused before this.
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("format", sa.String(32), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("bytes_done", sa.BigInteger, nullable=False),
    sa.Column("bytes_total", sa.BigInteger, nullable=False),
    sa.Column("job_id", sa.Integer, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=True),
    # What the load job detected in the files (catalog.families); NULL: not known (rows from before detection,
    # pickled checkpoints, add-ons whose keys do not tell). Nullable, so database.add_missing_columns adds them.
    sa.Column("family", sa.String(32), nullable=True),
    sa.Column("prediction_type", sa.String(32), nullable=True),
    sa.Column("few_step", sa.String(16), nullable=True),
    sa.Column("inpainting", sa.Boolean, nullable=True),
    sa.UniqueConstraint("kind", "model_id", name="uq_models_kind_model_id"),
)


@dataclass(frozen=True)
class ModelRecord:
    kind: ModelKind
    model_id: str
    state: ModelState
    source: str
    format: str
    message: str
    bytes_done: int
    bytes_total: int
    job_id: int | None
    created_at: datetime
    loaded_at: datetime | None
    family: ModelFamily | None = None
    prediction_type: PredictionType | None = None
    few_step: FewStep | None = None
    inpainting: bool | None = None

    @property
    def family_info(self) -> FamilyInfo | None:
        """What the load detected, as catalog.families reports it; None when no family was recorded."""
        if self.family is None:
            return None
        return FamilyInfo(
            self.family,
            self.prediction_type,
            inpainting=bool(self.inpainting),
            few_step=self.few_step,
            evidence="recorded by the load job",
        )

    @property
    def progress_percent(self) -> float:
        if self.state is ModelState.READY:
            return 100.0
        if self.bytes_total <= 0:
            return 0.0
        return round(100.0 * min(self.bytes_done, self.bytes_total) / self.bytes_total, 1)


class ModelRegistry:
    """Rows change only through these methods; a load job that ended without reporting (its worker died for
    good) is reconciled from the job's state whenever rows are read."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = utcnow):
        self._engine = engine
        self._clock = clock

    def begin_load(self, kind: ModelKind, model_id: str, *, source: str, format: str = "") -> ModelRecord:
        """Create the row in state `loading` (or reset a ready/failed one); refuses a model already loading."""
        values: dict[str, Any] = {
            "state": ModelState.LOADING.value,
            "source": source,
            "format": format,
            "message": "",
            "bytes_done": 0,
            "bytes_total": 0,
            "job_id": None,
            "created_at": to_db_time(self._clock()),
            "loaded_at": None,
            **_family_values(None),
        }
        with self._engine.begin() as conn:
            _reconcile(conn)
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(models).values(kind=kind.value, model_id=model_id, **values))
            except sa.exc.IntegrityError:
                updated = conn.execute(
                    sa.update(models)
                    .where(*_key(kind, model_id), models.c.state != ModelState.LOADING.value)
                    .values(**values)
                ).rowcount
                if updated == 0:
                    raise ValidationError.for_field(
                        "model_id", f"is already loading as a {kind.value} (delete it to cancel)", model_id
                    ) from None
            return _record(_select(conn, kind, model_id))

    def attach_job(self, kind: ModelKind, model_id: str, job_id: int) -> None:
        self._update(kind, model_id, job_id=job_id)

    def progress(self, kind: ModelKind, model_id: str, *, done: int, total: int) -> bool:
        """Record download progress; False when the row is gone (the model was deleted meanwhile)."""
        return self._update(kind, model_id, state=ModelState.LOADING.value, bytes_done=done, bytes_total=total)

    def mark_ready(self, kind: ModelKind, model_id: str, *, format: str, size: int) -> bool:
        return self._update(
            kind,
            model_id,
            state=ModelState.READY.value,
            format=format,
            message="",
            bytes_done=size,
            bytes_total=size,
            loaded_at=to_db_time(self._clock()),
        )

    def set_family(self, kind: ModelKind, model_id: str, info: FamilyInfo | None) -> bool:
        """Record what detection found (None: clear it); the load job calls this before it marks the row ready."""
        return self._update(kind, model_id, **_family_values(info))

    def mark_failed(self, kind: ModelKind, model_id: str, message: str) -> bool:
        return self._update(kind, model_id, state=ModelState.FAILED.value, message=message)

    def delete(self, kind: ModelKind, model_id: str) -> ModelRecord | None:
        """Remove the row; returns it as it was (None when there was none)."""
        with self._engine.begin() as conn:
            row = conn.execute(sa.select(models).where(*_key(kind, model_id))).first()
            if row is None:
                return None
            conn.execute(sa.delete(models).where(*_key(kind, model_id)))
            return _record(row)

    def get(self, kind: ModelKind, model_id: str) -> ModelRecord | None:
        rows = self._read(sa.select(models).where(*_key(kind, model_id)))
        return rows[0] if rows else None

    def list(self, *, kind: ModelKind | None = None, state: ModelState | None = None) -> list[ModelRecord]:
        query = sa.select(models).order_by(models.c.model_id, models.c.kind)
        if kind is not None:
            query = query.where(models.c.kind == kind.value)
        if state is not None:
            query = query.where(models.c.state == state.value)
        return self._read(query)

    def _read(self, query: sa.Select[Any]) -> builtins.list[ModelRecord]:
        """Rows as they are; only while a load is in flight does a read first reconcile (a write)."""
        with self._engine.connect() as conn:
            records = [_record(row) for row in conn.execute(query).all()]
        if not any(record.state is ModelState.LOADING and record.job_id is not None for record in records):
            return records
        with self._engine.begin() as conn:
            _reconcile(conn)
            return [_record(row) for row in conn.execute(query).all()]

    def _update(self, kind: ModelKind, model_id: str, **values: Any) -> bool:
        with self._engine.begin() as conn:
            return bool(conn.execute(sa.update(models).where(*_key(kind, model_id)).values(**values)).rowcount)


def _key(kind: ModelKind, model_id: str) -> tuple[sa.ColumnElement[bool], sa.ColumnElement[bool]]:
    return models.c.kind == kind.value, models.c.model_id == model_id


def _select(conn: Connection, kind: ModelKind, model_id: str) -> sa.Row[Any]:
    return conn.execute(sa.select(models).where(*_key(kind, model_id))).one()


def _family_values(info: FamilyInfo | None) -> dict[str, Any]:
    if info is None:
        return {"family": None, "prediction_type": None, "few_step": None, "inpainting": None}
    return {
        "family": info.family.value,
        "prediction_type": info.prediction_type.value if info.prediction_type else None,
        "few_step": info.few_step.value if info.few_step else None,
        "inpainting": info.inpainting,
    }


def _enum_or_none(enum: type[Any], value: str | None) -> Any:
    """A stored enum value, or None for NULL and for values a newer build wrote that this one does not know."""
    if value is None:
        return None
    try:
        return enum(value)
    except ValueError:
        return None


def _reconcile(conn: Connection) -> None:
    """A loading row whose job failed or was cancelled without the engine saying so (worker killed on its last
    attempt) shows as failed, with the job's reason."""
    ended = (
        sa.select(jobs.c.id)
        .where(
            jobs.c.id == models.c.job_id,
            jobs.c.status.in_([JobStatus.FAILED.value, JobStatus.CANCELLED.value]),
        )
        .exists()
    )
    reason = (
        sa.select(sa.func.coalesce(jobs.c.error_message, "The load job ended"))
        .where(jobs.c.id == models.c.job_id)
        .scalar_subquery()
    )
    conn.execute(
        sa.update(models)
        .where(models.c.state == ModelState.LOADING.value, models.c.job_id.is_not(None), ended)
        .values(state=ModelState.FAILED.value, message=reason)
    )


def _record(row: sa.Row[Any]) -> ModelRecord:
    return ModelRecord(
        kind=ModelKind(row.kind),
        model_id=row.model_id,
        state=ModelState(row.state),
        source=row.source,
        format=row.format,
        message=row.message,
        bytes_done=int(row.bytes_done),
        bytes_total=int(row.bytes_total),
        job_id=row.job_id,
        created_at=stored_time(row.created_at),
        loaded_at=from_db_time(row.loaded_at),
        family=_enum_or_none(ModelFamily, row.family),
        prediction_type=_enum_or_none(PredictionType, row.prediction_type),
        few_step=_enum_or_none(FewStep, row.few_step),
        inpainting=row.inpainting,
    )
