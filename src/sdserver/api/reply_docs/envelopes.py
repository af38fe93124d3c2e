"""The ModelsLab reply envelopes: the error body, and a job's success, processing and failed bodies (`fetch`)."""

from __future__ import annotations

from typing import Annotated, Literal, NotRequired

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict

from sdserver.errors import JobErrorCode
from sdserver.jobs import WebhookStatus

# Closed shapes: /openapi.json says `additionalProperties: false`, so schemathesis flags any field a handler
# sends that its shape does not name.
CLOSED = ConfigDict(extra="forbid")


@with_config(CLOSED)
class ErrorEnvelope(TypedDict):
    """An error: `message` (and the vendor's spelling `messege`) names the field, the rule and the value."""

    status: Literal["error"]
    message: str
    messege: str
    error_code: Annotated[
        str, Field(description="Stable, from the error table; each operation lists the codes it may answer.")
    ]
    errors: NotRequired[dict[str, list[str]]]
    retry_after: NotRequired[int]


@with_config(ConfigDict(extra="allow"))
class JobMeta(TypedDict):
    """The request's parameters as the job runs them (which ones depends on the endpoint), what the engine
    reported (seed, scheduler, precision), and the job id as a string."""

    id: str


@with_config(CLOSED)
class JobSuccess(TypedDict):
    """A finished job. `output` is a list of URLs (or base64 strings with `base64: yes`); super resolution on the
    enterprise and v3 paths answers one string."""

    status: Literal["success"]
    generationTime: float
    id: int
    output: list[str] | str
    future_links: list[str]
    nsfw_content_detected: bool
    webhook_status: WebhookStatus
    meta: JobMeta


@with_config(CLOSED)
class JobProcessing(TypedDict):
    """A queued or running job: poll `fetch_result`; the outputs will be at `future_links`."""

    status: Literal["processing"]
    id: int
    eta: int
    messege: str
    message: str
    tip: str
    fetch_result: str
    future_links: list[str]
    output: list[str]
    meta: JobMeta
    queue_position: int | None
    progress: float
    job_status: Literal["queued", "running"]


@with_config(CLOSED)
class JobFailed(TypedDict):
    """A failed or cancelled job (`output` is the vendor's empty string; there are no `future_links`)."""

    status: Literal["failed"]
    id: int
    message: str
    messege: str
    output: Literal[""]
    error_code: JobErrorCode


# What a job-creating endpoint and `fetch` answer.
JobReply = JobSuccess | JobProcessing | JobFailed


@with_config(CLOSED)
class CancelReply(TypedDict):
    """What became of the job: cancelled, stopping at its next step, or it had already ended."""

    status: Literal["success"]
    id: int
    message: str
    job_status: Literal["queued", "running", "succeeded", "failed", "cancelled"]


@with_config(CLOSED)
class StablecogError(TypedDict):
    """Stablecog's error body (always at its real HTTP status); no description for key errors."""

    error: str
    description: NotRequired[str]
