"""The job store's tables (jobs, webhook outbox, workers) and the conversions between their rows and `Job`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from sdserver.database import metadata
from sdserver.job_params import JobParams, JobReply, dump_job_params, load_job_params
from sdserver.jobs import Job, JobKind, JobSpec, JobStatus, WebhookStatus
from sdserver.jobstore.legacy_params import load_legacy_params

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # No foreign key to api_keys: deleting a key must not be blocked by (or cascade into) its history.
    sa.Column("owner_key_id", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("model_id", sa.String(300), nullable=False),
    # JSON: the typed job params and the reply echo, with their version (job_params.dump_job_params).
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("output_keys", sa.Text, nullable=False),
    sa.Column("future_links", sa.Text, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("steps", sa.Integer, nullable=False),
    sa.Column("scheduler", sa.String(100), nullable=False),
    sa.Column("batch_signature", sa.String(600), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("progress_step", sa.Integer, nullable=False),
    sa.Column("progress_total", sa.Integer, nullable=False),
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    sa.Column("result", sa.Text, nullable=False),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Column("webhook_url", sa.Text, nullable=True),
    # JSON, so an integer track_id comes back an integer and "12" stays a string.
    sa.Column("track_id", sa.Text, nullable=True),
    sa.Column("webhook_status", sa.String(16), nullable=False),
    sa.Column("worker_id", sa.String(200), nullable=True),
    sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    # Measured by the worker; the ETA of later jobs of the same model is built from it.
    sa.Column("seconds_per_step", sa.Float, nullable=True),
    # The run's seconds without its model load, and the load's seconds when it had to load (docs/eta.md).
    sa.Column("run_seconds", sa.Float, nullable=True),
    sa.Column("load_seconds", sa.Float, nullable=True),
    # When progress_step last moved: the ETA moves on within a long step.
    sa.Column("progress_at", sa.DateTime(timezone=True), nullable=True),
    # Set at claim: the claiming worker did not hold the model, so the run starts with a load.
    sa.Column("load_expected", sa.Boolean, nullable=True),
    # Claims scan queued jobs by age; the lease sweep scans running jobs by lease end.
    sa.Index("ix_jobs_status_created", "status", "created_at", "id"),
    sa.Index("ix_jobs_status_lease", "status", "lease_expires_at"),
    sa.Index("ix_jobs_owner_status", "owner_key_id", "status"),
    # The ETA's fit reads a model's latest finished runs.
    sa.Index("ix_jobs_recent_runs", "model_id", "status", "finished_at"),
)

job_webhooks = sa.Table(
    "job_webhooks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    # NULL once delivered or given up, so the index holds only deliveries still to make.
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True, index=True),
    # A sender holds a delivery until then; another sender may take it over afterwards.
    sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_status_code", sa.Integer, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("gave_up_at", sa.DateTime(timezone=True), nullable=True),
)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("worker_id", sa.String(200), primary_key=True),
    sa.Column("device", sa.String(100), nullable=False),
    sa.Column("engines", sa.Text, nullable=False),
    sa.Column("held_models", sa.Text, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False, index=True),
    # How many matching jobs the worker runs as one batch (the ETA plays the queue as the workers will).
    sa.Column("max_batch", sa.Integer, nullable=True),
    sa.Column("max_models", sa.Integer, nullable=True),
)


def to_db_time(value: datetime) -> datetime:
    """Every stored time is UTC: SQLite keeps times as text, so mixed offsets would compare wrongly."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: the job store needs timezone-aware times")
    return value.astimezone(UTC)


def from_db_time(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; they were written as UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def dump_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def dump_track_id(track_id: str | int | None) -> str | None:
    return None if track_id is None else dump_json(track_id)


def load_track_id(text: str | None) -> str | int | None:
    if text is None:
        return None
    value = json.loads(text)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"stored track_id is neither a string nor an integer: {text!r}")
    return value


def load_strings(text: str) -> tuple[str, ...]:
    return tuple(str(item) for item in json.loads(text))


def row_for_spec(spec: JobSpec, now: datetime) -> dict[str, Any]:
    """The `jobs` row of a newly submitted job."""
    return {
        "owner_key_id": spec.owner_key_id,
        "kind": spec.kind.value,
        "model_id": spec.model_id,
        "params": dump_json(dump_job_params(spec.params, spec.reply)),
        "output_keys": dump_json(list(spec.output_keys)),
        "future_links": dump_json(list(spec.future_links)),
        "width": spec.width,
        "height": spec.height,
        "steps": spec.steps,
        "scheduler": spec.scheduler,
        "batch_signature": spec.batch_signature,
        "status": JobStatus.QUEUED.value,
        "attempts": 0,
        "max_attempts": spec.max_attempts,
        "created_at": to_db_time(now),
        "progress_step": 0,
        "progress_total": 0,
        "cancel_requested": False,
        "result": "{}",
        "webhook_url": spec.webhook_url,
        "track_id": dump_track_id(spec.track_id),
        "webhook_status": WebhookStatus.NONE.value,
    }


def _params_from_row(row: sa.Row[Any]) -> tuple[JobParams, JobReply]:
    data = json.loads(row.params)
    if "version" not in data:
        # Written before params had a version (and a type): read as they were, never rewritten.
        return load_legacy_params(JobKind(row.kind), row.scheduler, data)
    return load_job_params(data)


def job_from_row(row: sa.Row[Any]) -> Job:
    params, reply = _params_from_row(row)
    return Job(
        id=row.id,
        owner_key_id=row.owner_key_id,
        kind=JobKind(row.kind),
        model_id=row.model_id,
        params=params,
        output_keys=load_strings(row.output_keys),
        future_links=load_strings(row.future_links),
        width=row.width,
        height=row.height,
        steps=row.steps,
        scheduler=row.scheduler,
        status=JobStatus(row.status),
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        created_at=stored_time(row.created_at),
        progress_step=row.progress_step,
        progress_total=row.progress_total,
        cancel_requested=bool(row.cancel_requested),
        result=json.loads(row.result),
        error_code=row.error_code,
        error_message=row.error_message,
        webhook_url=row.webhook_url,
        track_id=load_track_id(row.track_id),
        webhook_status=WebhookStatus(row.webhook_status),
        worker_id=row.worker_id,
        lease_expires_at=from_db_time(row.lease_expires_at),
        started_at=from_db_time(row.started_at),
        finished_at=from_db_time(row.finished_at),
        reply=reply,
    )


def stored_time(value: datetime | None) -> datetime:
    """A NOT NULL time column, as an aware UTC datetime."""
    aware = from_db_time(value)
    if aware is None:
        raise ValueError("expected a stored time, found NULL")
    return aware
