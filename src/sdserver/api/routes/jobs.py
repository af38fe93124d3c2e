"""`fetch` and `cancel` of jobs, in both forms (`/fetch/{id}` and `/fetch` + request_id), under every prefix."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from sdserver.api.aliases import PREFIXES, add_alias_routes
from sdserver.api.deps import CallerDep, ParamsDep, ServicesDep
from sdserver.api.fields import LenientInt, validate_request
from sdserver.api.job_flow import render_job
from sdserver.api.reply_docs.jobs import CANCEL_REPLIES, FETCH_REPLIES
from sdserver.api.schemas import LenientRequest
from sdserver.auth import ApiKey
from sdserver.errors import NotFoundError, ValidationError
from sdserver.jobs import JobStatus

router = APIRouter(tags=["jobs"])


class FetchRequest(LenientRequest):
    request_id: LenientInt = Field(default=None, description="The job id (string or number).")


# Ids are SQL BIGINTs: a bigger number cannot name a job (and would overflow the database driver).
_MAX_JOB_ID = 2**63 - 1


def _in_id_range(job_id: int) -> int:
    if abs(job_id) > _MAX_JOB_ID:
        raise NotFoundError()
    return job_id


def _job_id_from_path(raw: str) -> int:
    try:
        return _in_id_range(int(raw.strip()))
    except ValueError:
        raise NotFoundError() from None


def _job_id_from_body(params: dict[str, Any]) -> int:
    job_id = validate_request(FetchRequest, params).request_id
    if job_id is None:
        raise ValidationError.for_field("request_id", "is required", None)
    return _in_id_range(job_id)


def _owner_filter(caller: ApiKey) -> int | None:
    # Admin keys operate the server and may look at every job; user keys only at their own.
    return None if caller.is_admin else caller.id


async def fetch_by_path(job_id: str, services: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    return await _fetch(services, caller, _job_id_from_path(job_id))


async def fetch_by_body(services: ServicesDep, caller: CallerDep, params: ParamsDep) -> dict[str, Any]:
    return await _fetch(services, caller, _job_id_from_body(params.values))


async def _fetch(services: ServicesDep, caller: ApiKey, job_id: int) -> dict[str, Any]:
    read = services.jobs.get_with_estimate
    job, estimate = await run_in_threadpool(read, job_id, owner_key_id=_owner_filter(caller))
    return await render_job(services, job, estimate)


async def cancel_by_path(job_id: str, services: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    return await _cancel(services, caller, _job_id_from_path(job_id))


async def cancel_by_body(services: ServicesDep, caller: CallerDep, params: ParamsDep) -> dict[str, Any]:
    return await _cancel(services, caller, _job_id_from_body(params.values))


async def _cancel(services: ServicesDep, caller: ApiKey, job_id: int) -> dict[str, Any]:
    job = await run_in_threadpool(services.jobs.cancel, job_id, owner_key_id=_owner_filter(caller))
    if job.status is JobStatus.CANCELLED:
        message = "Request cancelled"
    elif job.status.is_terminal:
        message = f"The request already ended ({job.status.value}); nothing to cancel"
    else:
        message = "Cancel requested; the job stops at its next step"
    return {"status": "success", "id": job.id, "message": message, "job_status": job.status.value}


def _register() -> None:
    def under_every_family(suffix: str) -> list[str]:
        return [prefix + suffix for prefix in PREFIXES]

    # Some clients GET the fetch_result link (key in the query or a header): listed as an alias.
    add_alias_routes(
        router,
        under_every_family("/fetch/{job_id}"),
        fetch_by_path,
        summary="Fetch a job's result or progress",
        methods=("POST", "GET"),
        replies=FETCH_REPLIES,
    )
    add_alias_routes(
        router,
        under_every_family("/fetch"),
        fetch_by_body,
        summary="Fetch a job's result or progress (request_id in the body)",
        body=FetchRequest,
        replies=FETCH_REPLIES,
    )
    add_alias_routes(
        router,
        under_every_family("/cancel/{job_id}"),
        cancel_by_path,
        summary="Cancel a queued or running job",
        replies=CANCEL_REPLIES,
    )
    add_alias_routes(
        router,
        under_every_family("/cancel"),
        cancel_by_body,
        summary="Cancel a queued or running job (request_id in the body)",
        body=FetchRequest,
        replies=CANCEL_REPLIES,
    )


_register()
