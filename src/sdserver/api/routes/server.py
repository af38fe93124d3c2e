"""Routes: server management (system_details, schedulers_list, clear_cache, clear_queue, restart_server,
update_server/update, sync_models, update_s3) and `GET /metrics`. Admin-only except where contract section 1
lets user keys in; workers are reached only through the control channel in the SQL store."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from sdserver import __version__
from sdserver.api.aliases import SDK_CLASS_PREFIXES, add_alias_routes
from sdserver.api.deps import AdminDep, CallerDep, ParamsDep, ServicesDep
from sdserver.api.metrics import CONTENT_TYPE, Metrics, address_allowed
from sdserver.api.params import find_api_key, read_params
from sdserver.api.replies import error_reply_for
from sdserver.api.reply_docs.admin import (
    CLEAR_CACHE_REPLIES,
    CLEAR_QUEUE_REPLIES,
    METRICS_RESPONSES,
    RESTART_REPLIES,
    SCHEDULERS_REPLIES,
    SYNC_MODELS_REPLIES,
    SYSTEM_DETAILS_REPLIES,
    UPDATE_REPLIES,
    UPDATE_S3_REPLIES,
)
from sdserver.api.reply_docs.declare import Replies
from sdserver.api.routes.models import family_fields
from sdserver.api.storage_control import UpdateS3Request, s3_config_from, switch_to_s3
from sdserver.catalog.schedulers import EXTRA_SCHEDULER_NAMES, SAMPLING_SCHEDULERS, SCHEDULER_NAMES
from sdserver.errors import ForbiddenError, SdError
from sdserver.jobs import JobStatus
from sdserver.jobstore.control import Command
from sdserver.jobstore.stats import read_stats

router = APIRouter(tags=["server management"])

ENTERPRISE = "/api/v1/enterprise"
# Where each endpoint is served. The enterprise family is where the vendor documents them; schedulers_list is
# also answered under the v3 and v4 families, whose generation endpoints take a `scheduler`.
# The official SDK's shared calls are also answered under each SDK class prefix.
PATHS: dict[str, tuple[str, ...]] = {
    "system_details": (ENTERPRISE, *SDK_CLASS_PREFIXES),
    "schedulers_list": (ENTERPRISE, "/api/v3", "/api/v4/dreambooth"),
    "clear_cache": (ENTERPRISE, *SDK_CLASS_PREFIXES),
    "clear_queue": (ENTERPRISE, *SDK_CLASS_PREFIXES),
    "restart_server": (ENTERPRISE, *SDK_CLASS_PREFIXES),
    # The vendor's docs say update_server; the official SDK calls update.
    "update_server": (ENTERPRISE,),
    "update": (ENTERPRISE, *SDK_CLASS_PREFIXES),
    "sync_models": (ENTERPRISE,),
    "update_s3": (ENTERPRISE,),
}
UPGRADE_HINT = (
    "This is a self-hosted server: it does not update itself. The operator upgrades it (install the new "
    "version of the package or image, then restart the service); running jobs are released back to the queue."
)
RESTART_MESSAGE = (
    "Workers restart gracefully: each finishes its current job, then a fresh process takes its place; "
    "queued jobs stay queued and nothing is lost."
)


async def system_details(services: ServicesDep, _admin: AdminDep) -> dict[str, Any]:
    stats = await run_in_threadpool(read_stats, services.engine)
    workers = [
        {
            "worker_id": worker.worker_id,
            "device": worker.device,
            "engines": list(worker.engines),
            "loaded_models": list(worker.held_models),
            "last_seen": worker.last_seen.isoformat(),
        }
        for worker in stats.workers
    ]
    queued, running = stats.count(JobStatus.QUEUED), stats.count(JobStatus.RUNNING)
    return {
        "status": "ok",
        "version": __version__,
        # Models loaded in some live worker's memory right now (what the vendor counts).
        "model_count": len(stats.held_models()),
        "loaded_models": list(stats.held_models()),
        "queue_time": stats.queue_seconds,
        "queue_depth": queued + running,
        "queue": {"queued": queued, "running": running},
        "worker_count": len(workers),
        "workers": workers,
        "devices": sorted({worker.device for worker in stats.workers if worker.device}),
        "memory": host_memory(),
        "storage": "s3" if services.objects.config or services.settings.storage == "s3" else "local",
    }


async def schedulers_list(_caller: CallerDep) -> dict[str, Any]:
    # The contract's names in its order (those that cannot sample a Stable Diffusion model left out), then the
    # ones we run beyond the contract.
    contract = [name for name in SCHEDULER_NAMES if name in SAMPLING_SCHEDULERS]
    return {"status": "success", "schedulers": contract + sorted(EXTRA_SCHEDULER_NAMES)}


async def clear_cache(services: ServicesDep, _admin: AdminDep) -> dict[str, Any]:
    def clear() -> tuple[int, int]:
        services.control.issue(Command.CLEAR_CACHE)
        removed = services.objects.purge_expired()
        services.uploads.forget_expired()
        return removed, len(services.jobs.live_workers(within_s=60.0))

    removed, workers = await run_in_threadpool(clear)
    return {
        "status": "success",
        "message": "Cache cleared successfully",
        "temp_files_removed": removed,
        "workers_notified": workers,
    }


async def clear_queue(services: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    # An admin key operates the server and clears every key's queue; a user key clears only its own jobs.
    owner = None if caller.is_admin else caller.id
    ids = await run_in_threadpool(lambda: services.control.cancel_queued(owner_key_id=owner))
    whose = "all queued jobs" if owner is None else "your queued jobs"
    return {
        "status": "success",
        "message": f"Queue cleared: {len(ids)} of {whose} cancelled; running jobs finish",
        "cancelled": len(ids),
        "ids": ids,
    }


async def restart_server(services: ServicesDep, _admin: AdminDep) -> dict[str, Any]:
    def restart() -> int:
        services.control.issue(Command.RESTART_WORKERS)
        return len(services.jobs.live_workers(within_s=60.0))

    workers = await run_in_threadpool(restart)
    return {"status": "success", "message": RESTART_MESSAGE, "workers": workers}


async def update_server(_admin: AdminDep) -> dict[str, Any]:
    return {"status": "success", "message": UPGRADE_HINT, "updated": False, "version": __version__}


async def sync_models(services: ServicesDep, _admin: AdminDep) -> dict[str, Any]:
    def listing() -> list[dict[str, Any]]:
        # Detects the family of models dropped into the models folder (headers and configs only; cached).
        return [
            {
                "model_id": entry.model_id,
                "model_type": entry.kind.value,
                "state": entry.state.value,
                "load_data": _vendor_time(entry.loaded_at),
                **family_fields(services.models.entry_family(entry)),
            }
            for entry in services.models.all_models()
        ]

    models = await run_in_threadpool(listing)
    return {
        "status": "success",
        # sync_key names a vendor-hosted catalogue; a self-hosted server has only its own models to offer.
        "message": f"This server has {len(models)} models; add more with load_model",
        "models": models,
    }


async def update_s3(services: ServicesDep, _admin: AdminDep, params: ParamsDep) -> dict[str, Any]:
    config = s3_config_from(params.values)
    await run_in_threadpool(switch_to_s3, services, config)
    return {
        "status": "success",
        "message": "Object store switched to S3; new images go to the bucket, earlier links keep working",
        "storage": config.public(),
    }


async def metrics(request: Request, services: ServicesDep) -> Response:
    """Prometheus text; readable from an allow-listed address, or with an admin key."""
    client = request.client.host if request.client else None
    if not address_allowed(client, services.settings.metrics_allowlist):
        try:
            key = find_api_key(request, await read_params(request))
            caller = await run_in_threadpool(services.keys.verify, key)
            if not caller.is_admin:
                raise ForbiddenError()
        except SdError as exc:
            # Scrapers understand status codes, not envelopes: real codes here whatever the setting says.
            body = {"status": "error", "message": exc.message, "error_code": exc.code}
            return JSONResponse(body, status_code=error_reply_for(exc.code).http_status)
    registry: Metrics = request.app.state.metrics
    return Response(await run_in_threadpool(registry.render), media_type=CONTENT_TYPE)


def host_memory() -> dict[str, int | None]:
    """Memory of the API host (Linux /proc; None where unknown) and the API process's peak resident size."""
    info: dict[str, int] = {}
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                info[name] = int(parts[0]) * 1024
    total = info.get("MemTotal") or _sysconf_total()
    # ru_maxrss is KiB on Linux.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"total_bytes": total, "available_bytes": info.get("MemAvailable"), "api_process_peak_rss_bytes": peak}


def _sysconf_total() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def _vendor_time(moment: datetime | None) -> str | None:
    return moment.strftime("%m/%d/%Y %H:%M:%S") if moment else None


Handler = Callable[..., Coroutine[Any, Any, Any]]
_UPDATE_SUMMARY = "Self-hosted: says that updates are the operator's job"
# name -> (handler, methods, summary, replies). Read-only endpoints also answer GET; those that change state only
# POST.
_ENDPOINTS: dict[str, tuple[Handler, list[str], str, Replies]] = {
    "system_details": (
        system_details,
        ["POST", "GET"],
        "Server status: loaded models, queue, workers, memory",
        SYSTEM_DETAILS_REPLIES,
    ),
    "schedulers_list": (
        schedulers_list,
        ["POST", "GET"],
        "Scheduler names accepted by generation endpoints",
        SCHEDULERS_REPLIES,
    ),
    "clear_cache": (
        clear_cache,
        ["POST"],
        "Workers drop loaded models; expired temp files are purged",
        CLEAR_CACHE_REPLIES,
    ),
    "clear_queue": (
        clear_queue,
        ["POST"],
        "Cancel queued jobs (your own; an admin key: everyone's)",
        CLEAR_QUEUE_REPLIES,
    ),
    "restart_server": (
        restart_server,
        ["POST"],
        "Restart the workers gracefully (no job is lost)",
        RESTART_REPLIES,
    ),
    "update_server": (update_server, ["POST"], _UPDATE_SUMMARY, UPDATE_REPLIES),
    "update": (update_server, ["POST"], _UPDATE_SUMMARY, UPDATE_REPLIES),
    "sync_models": (sync_models, ["POST"], "The models this server has", SYNC_MODELS_REPLIES),
    "update_s3": (
        update_s3,
        ["POST"],
        "Switch the object store to an S3 bucket, after checking it works",
        UPDATE_S3_REPLIES,
    ),
}


def _register() -> None:
    for name, (handler, methods, summary, replies) in _ENDPOINTS.items():
        # One documented operation (POST, first prefix); the GET and alias copies behave the same.
        add_alias_routes(
            router,
            [f"{prefix}/{name}" for prefix in PATHS[name]],
            handler,
            summary=summary,
            replies=replies,
            body=UpdateS3Request if name == "update_s3" else None,
            methods=methods,
        )
    router.add_api_route(
        "/metrics",
        metrics,
        methods=["GET"],
        summary="Prometheus metrics (admin key, or an address in metrics_allowlist)",
        tags=["metrics"],
        response_class=Response,
        responses=METRICS_RESPONSES,
    )


_register()
