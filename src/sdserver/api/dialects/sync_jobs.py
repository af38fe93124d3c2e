"""Runs a dialect request's job synchronously: queued like any job, awaited up to SDSERVER_DIALECT_WAIT_S."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from sdserver.api.job_flow import submit_job, wait_for_job
from sdserver.api.services import Services
from sdserver.errors import JobErrorCode, JobFailedError, JobTimeoutError
from sdserver.jobs import Job, JobSpec, JobStatus


async def run_to_end(services: Services, spec: JobSpec) -> Job:
    """Submit the job (fair-use cap included) and wait for its end. A failed job raises JobFailedError; a job
    still unfinished at the ceiling is cancelled and raises JobTimeoutError; a cancelled job is returned."""
    job = await submit_job(services, spec)
    ceiling = services.settings.dialect_wait_s
    job = await wait_for_job(services, job, ceiling)
    if not job.status.is_terminal:
        # Nobody will collect it: free the queue and the worker.
        await run_in_threadpool(services.jobs.cancel, job.id, owner_key_id=None)
        raise JobTimeoutError(
            f"job {job.id} did not finish within {ceiling:g} s (SDSERVER_DIALECT_WAIT_S) and was cancelled"
        )
    if job.status is JobStatus.FAILED:
        code = job.error_code or JobErrorCode.FAILED
        raise JobFailedError(f"job {job.id} failed: {job.error_message or code}", job_code=str(code))
    return job


async def read_outputs(services: Services, job: Job) -> list[bytes]:
    """The bytes of a finished job's outputs (none for a cancelled job)."""
    if job.status is not JobStatus.SUCCEEDED:
        return []
    return [await run_in_threadpool(services.objects.get, key) for key in job.output_keys]
