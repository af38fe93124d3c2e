"""Reply shapes of server management (system_details … update_s3), of /healthz and of /files."""

from __future__ import annotations

from typing import Any, Literal, NotRequired

from pydantic import with_config
from typing_extensions import TypedDict

from sdserver.api.reply_docs.declare import ADMIN_CODES, Replies, json_reply
from sdserver.api.reply_docs.envelopes import CLOSED
from sdserver.catalog.registry import ModelKind, ModelState
from sdserver.errors import StorageError


@with_config(CLOSED)
class WorkerDetails(TypedDict):
    worker_id: str
    device: str | None
    engines: list[str]
    loaded_models: list[str]
    last_seen: str


@with_config(CLOSED)
class QueueCounts(TypedDict):
    queued: int
    running: int


@with_config(CLOSED)
class HostMemory(TypedDict):
    """Bytes; None where the host does not say."""

    total_bytes: int | None
    available_bytes: int | None
    api_process_peak_rss_bytes: int | None


@with_config(CLOSED)
class SystemDetails(TypedDict):
    """The server now: models held by live workers, the queue, each worker, host memory, the object store."""

    status: Literal["ok"]
    version: str
    model_count: int
    loaded_models: list[str]
    queue_time: int
    queue_depth: int
    queue: QueueCounts
    worker_count: int
    workers: list[WorkerDetails]
    devices: list[str]
    memory: HostMemory
    storage: Literal["local", "s3"]


@with_config(CLOSED)
class SchedulersList(TypedDict):
    """The scheduler names generation endpoints accept."""

    status: Literal["success"]
    schedulers: list[str]


@with_config(CLOSED)
class ClearCacheReply(TypedDict):
    """Workers were told to drop their loaded models; expired temporary files were removed."""

    status: Literal["success"]
    message: str
    temp_files_removed: int
    workers_notified: int


@with_config(CLOSED)
class ClearQueueReply(TypedDict):
    """The queued jobs cancelled (running jobs finish)."""

    status: Literal["success"]
    message: str
    cancelled: int
    ids: list[int]


@with_config(CLOSED)
class RestartReply(TypedDict):
    """The live workers told to restart gracefully."""

    status: Literal["success"]
    message: str
    workers: int


@with_config(CLOSED)
class UpdateReply(TypedDict):
    """A self-hosted server never updates itself: `updated` is always false."""

    status: Literal["success"]
    message: str
    updated: bool
    version: str


@with_config(CLOSED)
class SyncedModel(TypedDict):
    model_id: str
    model_type: ModelKind
    state: ModelState
    load_data: str | None
    family: str | None
    prediction_type: str | None
    few_step: str | None
    supported: NotRequired[bool]
    unsupported_reason: NotRequired[str]


@with_config(CLOSED)
class SyncModelsReply(TypedDict):
    """The models this server has."""

    status: Literal["success"]
    message: str
    models: list[SyncedModel]


@with_config(CLOSED)
class S3Storage(TypedDict):
    """The bucket now in use; only the last characters of the access key id are shown."""

    bucket: str
    prefix: str
    endpoint_url: str | None
    region_name: str
    public_url: str | None
    aws_access_key_id: str


@with_config(CLOSED)
class UpdateS3Reply(TypedDict):
    """The object store is now the S3 bucket; earlier links keep working."""

    status: Literal["success"]
    message: str
    storage: S3Storage


@with_config(CLOSED)
class HealthOk(TypedDict):
    """Ready: the server and its database answer."""

    status: Literal["ok"]
    version: str


@with_config(CLOSED)
class HealthDown(TypedDict):
    """Not ready: the database does not answer."""

    status: Literal["unavailable"]
    database: Literal["unreachable"]


@with_config(CLOSED)
class FileNotFound(TypedDict):
    """No such object, or a temporary object's link is not valid (any more)."""

    status: Literal["error"]
    message: str


SYSTEM_DETAILS_REPLIES = Replies(ok=SystemDetails, codes=ADMIN_CODES)
SCHEDULERS_REPLIES = Replies(ok=SchedulersList)
CLEAR_CACHE_REPLIES = Replies(ok=ClearCacheReply, codes=ADMIN_CODES)
CLEAR_QUEUE_REPLIES = Replies(ok=ClearQueueReply)
RESTART_REPLIES = Replies(ok=RestartReply, codes=ADMIN_CODES)
UPDATE_REPLIES = Replies(ok=UpdateReply, codes=ADMIN_CODES)
SYNC_MODELS_REPLIES = Replies(ok=SyncModelsReply, codes=ADMIN_CODES)
UPDATE_S3_REPLIES = Replies(ok=UpdateS3Reply, codes=(*ADMIN_CODES, StorageError.code))
HEALTH_REPLIES = Replies(ok=HealthOk, codes=(), errors_at_200=False, extra={503: HealthDown})

# /files/{key}: the stored bytes (PNG, JPEG or WebP), or FileNotFound (always a real 404).
FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The object's bytes",
        "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
    },
    404: json_reply(FileNotFound, "No such object, or the link is not valid"),
}


@with_config(CLOSED)
class MetricsRefused(TypedDict):
    """Neither an allow-listed address nor an admin key (always the real status: scrapers read codes)."""

    status: Literal["error"]
    message: str
    error_code: str


# /metrics: Prometheus text, or a refusal.
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Metrics"},
    **{status: json_reply(MetricsRefused, (MetricsRefused.__doc__ or "").strip()) for status in (401, 403)},
}
