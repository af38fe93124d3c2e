"""The job record shared by the API, the job store and the workers: kinds, statuses and allowed transitions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, TypeVar

from sdserver.batch_keys import batch_key
from sdserver.job_params import (
    ControlNetParams,
    FakeParams,
    GenerationParams,
    JobParams,
    JobReply,
    ModelLoadParams,
    SuperResolutionParams,
)

P = TypeVar("P")


class JobKind(StrEnum):
    TEXT2IMG = "text2img"
    IMG2IMG = "img2img"
    INPAINT = "inpaint"
    CONTROLNET = "controlnet"
    SUPER_RESOLUTION = "super_resolution"
    MODEL_LOAD = "model_load"


# Model ids served by the deterministic test engine (engines=["test"]): test-ok, test-slow, test-raise, ...
TEST_MODEL_PREFIX = "test-"

# The params each kind takes; the test engine's own params fit every kind it runs.
PARAMS_FOR_KIND: Final[dict[JobKind, tuple[type[Any], ...]]] = {
    JobKind.TEXT2IMG: (GenerationParams, FakeParams),
    JobKind.IMG2IMG: (GenerationParams, FakeParams),
    JobKind.INPAINT: (GenerationParams, FakeParams),
    JobKind.CONTROLNET: (ControlNetParams, FakeParams),
    JobKind.SUPER_RESOLUTION: (SuperResolutionParams, FakeParams),
    JobKind.MODEL_LOAD: (ModelLoadParams,),
}


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

# Every transition the store may make. A terminal job never changes again.
ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    # RUNNING -> QUEUED: a lost lease or a graceful stop puts the job back for another claim.
    JobStatus.RUNNING: frozenset({JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def can_transition(current: JobStatus, new: JobStatus) -> bool:
    return new in ALLOWED_TRANSITIONS[current]


class WebhookStatus(StrEnum):
    """What `webhook_status` says: nothing to send, waiting to be sent, retrying, delivered, or given up."""

    NONE = ""
    PENDING = "pending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class JobSpec:
    """What the API submits: validated parameters the worker trusts, what the replies echo, and outputs allocated
    up front."""

    owner_key_id: int
    kind: JobKind
    model_id: str
    # Already validated and defaulted at the edge; the worker runs exactly these.
    params: JobParams
    # Object keys the outputs will be written to, and their URLs (`future_links`), fixed at submit time.
    output_keys: tuple[str, ...]
    future_links: tuple[str, ...]
    width: int = 0
    height: int = 0
    steps: int = 0
    scheduler: str = ""
    webhook_url: str | None = None
    # Echoed unchanged: string or integer, as the client sent it.
    track_id: str | int | None = None
    max_attempts: int = 3
    reply: JobReply = field(default_factory=JobReply)

    def __post_init__(self) -> None:
        if not isinstance(self.params, PARAMS_FOR_KIND[self.kind]):
            raise TypeError(f"a {self.kind.value} job cannot take {type(self.params).__name__}")

    @property
    def batch_signature(self) -> str:
        """Jobs with the same signature can run as one batch on one loaded model (see batch_keys.py)."""
        base = batch_signature(self.kind, self.model_id, self.width, self.height, self.steps, self.scheduler)
        key = batch_key(self.kind.value, self.params, unique="|".join(self.output_keys[:1]) or str(id(self)))
        return f"{base}|{key}" if key else base


def batch_signature(kind: JobKind, model_id: str, width: int, height: int, steps: int, scheduler: str) -> str:
    return f"{kind.value}|{model_id}|{width}x{height}|{steps}|{scheduler}"


@dataclass(frozen=True)
class Job:
    """A job as stored. Built only by the job store."""

    id: int
    owner_key_id: int
    kind: JobKind
    model_id: str
    params: JobParams
    output_keys: tuple[str, ...]
    future_links: tuple[str, ...]
    width: int
    height: int
    steps: int
    scheduler: str
    status: JobStatus
    attempts: int
    max_attempts: int
    created_at: datetime
    progress_step: int = 0
    progress_total: int = 0
    cancel_requested: bool = False
    # Whatever the engine returned for the reply (`meta` additions, nsfw flags, seeds used...).
    result: dict[str, Any] = field(default_factory=dict)
    error_code: str | None = None
    error_message: str | None = None
    webhook_url: str | None = None
    track_id: str | int | None = None
    webhook_status: WebhookStatus = WebhookStatus.NONE
    worker_id: str | None = None
    lease_expires_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    reply: JobReply = field(default_factory=JobReply)

    def params_as(self, cls: type[P]) -> P:
        """The params as the type this kind's engine expects; a mismatch is a bug upstream, not bad input."""
        if not isinstance(self.params, cls):
            raise TypeError(f"job {self.id} ({self.kind.value}) has {type(self.params).__name__}, not {cls.__name__}")
        return self.params

    @property
    def progress_percent(self) -> float:
        if self.status is JobStatus.SUCCEEDED:
            return 100.0
        if self.progress_total <= 0:
            return 0.0
        return round(100.0 * min(self.progress_step, self.progress_total) / self.progress_total, 1)

    @property
    def generation_time_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, (self.finished_at - self.started_at).total_seconds())
