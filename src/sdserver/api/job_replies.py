"""Turns a stored job into the vendor's reply bodies: success, processing and failed (also webhook bodies)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from sdserver.errors import JobErrorCode
from sdserver.jobs import Job, JobStatus

PROCESSING_MESSAGE = "Request processing in background, you can fetch the result with the fetch_result link"
PROCESSING_TIP = "Your image is processing; the output will be available at the future_links when it is done"
CANCELLED_MESSAGE = "The request was cancelled"
DEFAULT_FETCH_PREFIX = "/api/v1/enterprise"
# Result entries that are reply fields of their own rather than `meta`.
_RESULT_FIELDS = frozenset({"nsfw_content_detected"})


def fetch_url_for(base_url: str, job: Job) -> str:
    """The absolute fetch link clients poll, under the prefix family the job was submitted on."""
    prefix = job.reply.fetch_prefix or DEFAULT_FETCH_PREFIX
    return f"{base_url}{prefix}/fetch/{job.id}"


def job_meta(job: Job) -> dict[str, Any]:
    """The request parameters as the job ran them, plus what the engine reported, and the id as a string."""
    meta: dict[str, Any] = dict(job.reply.meta)
    # The engine's report (seed used, scheduler applied, precision) wins over what was asked for.
    meta.update({key: value for key, value in job.result.items() if key not in _RESULT_FIELDS})
    meta["id"] = str(job.id)
    return meta


def success_body(job: Job, read_object: Callable[[str], bytes]) -> dict[str, Any]:
    if job.reply.base64:
        output: list[str] = [base64.b64encode(read_object(key)).decode() for key in job.output_keys]
    else:
        output = list(job.future_links)
    generation_time = job.generation_time_s
    return {
        "status": "success",
        "generationTime": round(generation_time, 3) if generation_time is not None else 0.0,
        "id": job.id,
        # Super resolution on the enterprise and v3 paths answers one URL as a string, not a list.
        "output": output[0] if job.reply.single_output and output else output,
        "future_links": list(job.future_links),
        "nsfw_content_detected": bool(job.result.get("nsfw_content_detected", False)),
        "webhook_status": job.webhook_status.value,
        "meta": job_meta(job),
    }


def processing_body(job: Job, *, base_url: str, eta_s: int, position: int | None) -> dict[str, Any]:
    return {
        "status": "processing",
        "id": job.id,
        "eta": int(eta_s),
        "messege": PROCESSING_MESSAGE,
        "message": PROCESSING_MESSAGE,
        "tip": PROCESSING_TIP,
        "fetch_result": fetch_url_for(base_url, job),
        "future_links": list(job.future_links),
        "output": [],
        "meta": job_meta(job),
        # Extras clients may show: where the job stands.
        "queue_position": position,
        "progress": job.progress_percent,
        "job_status": job.status.value,
    }


def failed_body(job: Job) -> dict[str, Any]:
    """The vendor's failed shape (`output` ""); no `future_links`: those objects will never exist."""
    message = CANCELLED_MESSAGE if job.status is JobStatus.CANCELLED else (job.error_message or "Job failed")
    return {
        "status": "failed",
        "id": job.id,
        "message": message,
        "messege": message,
        "output": "",
        "error_code": JobErrorCode.CANCELLED
        if job.status is JobStatus.CANCELLED
        else (job.error_code or JobErrorCode.FAILED),
    }


def webhook_body(job: Job, read_object: Callable[[str], bytes]) -> dict[str, Any]:
    """What a webhook receiver gets: the fetch body of a finished job, with `track_id` always present."""
    body = success_body(job, read_object) if job.status is JobStatus.SUCCEEDED else failed_body(job)
    body["track_id"] = job.track_id
    return body
