"""Submits jobs for the API (outputs allocated up front, fair-use cap), waits briefly, and renders replies."""

from __future__ import annotations

import time
from typing import Any

from starlette.concurrency import run_in_threadpool

from sdserver.api.job_replies import failed_body, processing_body, success_body
from sdserver.api.services import Services
from sdserver.errors import RateLimitedError
from sdserver.jobs import Job, JobSpec, JobStatus
from sdserver.jobstore.eta import Estimate
from sdserver.objects.base import make_object_key

# A client over its cap is told to come back after roughly this long.
_RETRY_AFTER_S = 10


def allocate_outputs(services: Services, count: int, *, temp: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Object keys for the outputs and their final URLs (`future_links`), fixed before the job runs."""
    keys = tuple(make_object_key("outputs", "png", temp=temp) for _ in range(count))
    return keys, tuple(services.objects.url_for(key) for key in keys)


async def submit_job(services: Services, spec: JobSpec) -> Job:
    active = await run_in_threadpool(services.jobs.count_active, spec.owner_key_id)
    cap = services.settings.max_active_jobs_per_key
    if active >= cap:
        raise RateLimitedError(
            f"Rate limit exceeded: this key already has {active} queued or running jobs (limit {cap})",
            retry_after_s=_RETRY_AFTER_S,
        )
    return await run_in_threadpool(services.jobs.submit, spec)


async def wait_for_job(services: Services, job: Job, timeout_s: float) -> Job:
    """Wait until the job ends or the timeout passes; returns the latest state either way."""
    deadline = time.monotonic() + timeout_s
    while not job.status.is_terminal:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        await run_in_threadpool(services.jobs.wait_for_job_change, job.id, min(remaining, 1.0))
        job = await run_in_threadpool(services.jobs.get, job.id, owner_key_id=None)
    return job


async def run_job(services: Services, spec: JobSpec, *, instant_response: bool) -> dict[str, Any]:
    """Submit, wait up to the configured time unless told not to, and answer with the job's state."""
    job = await submit_job(services, spec)
    if not instant_response:
        job = await wait_for_job(services, job, services.settings.sync_wait_s)
    return await render_job(services, job)


async def render_job(services: Services, job: Job, estimate: Estimate | None = None) -> dict[str, Any]:
    """The body `fetch` (and a generation request) answers for a job in its current state; `estimate` when
    the caller read it with the job."""
    if job.status is JobStatus.SUCCEEDED:
        return await run_in_threadpool(success_body, job, services.objects.get)
    if job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        return failed_body(job)
    if estimate is None:
        estimate = await run_in_threadpool(services.jobs.estimate, job)
    return processing_body(
        job, base_url=services.settings.external_base_url, eta_s=estimate.eta_s, position=estimate.position
    )
