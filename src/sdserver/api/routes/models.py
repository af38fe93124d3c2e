"""Routes: model management (load_model, load_model_v2, load_vae, verify_model, get_all_models, delete_model)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from sdserver.api.aliases import add_alias_routes, family_prefix
from sdserver.api.deps import AdminDep, CallerDep, ParamsDep, ServicesDep
from sdserver.api.fields import validate_request
from sdserver.api.job_flow import submit_job
from sdserver.api.job_replies import fetch_url_for
from sdserver.api.models import ModelEntry
from sdserver.api.reply_docs.declare import Replies
from sdserver.api.reply_docs.models import ALL_MODELS_REPLIES, DELETE_REPLIES, LOAD_REPLIES, VERIFY_REPLIES
from sdserver.api.schemas_models import (
    DeleteModelRequest,
    LoadModelRequest,
    LoadModelV2Request,
    LoadPlan,
    LoadVaeRequest,
    VerifyModelRequest,
    kind_for_type,
    plan_load_model,
    plan_load_model_v2,
    plan_load_vae,
)
from sdserver.api.services import Services
from sdserver.auth import ApiKey
from sdserver.catalog.families.cache import Detected
from sdserver.catalog.families.capabilities import model_capabilities
from sdserver.catalog.files import remove_model_files
from sdserver.catalog.manifests import ManifestStore
from sdserver.catalog.registry import ModelKind, ModelState
from sdserver.errors import JobErrorCode, ModelNotFoundError, SdError
from sdserver.job_params import JobReply, ModelLoadParams
from sdserver.jobs import JobKind, JobSpec

router = APIRouter(tags=["model management"])

# Every family clients send model management to (enterprise is the documented one).
MODEL_PREFIXES: tuple[str, ...] = ("/api/v1/enterprise", "/api/v3", "/api/v4/dreambooth")
LOAD_STARTED = "model load started"
VAE_LOAD_STARTED = "VAE load started"
# The vendor's spelling and format of the load time in get_all_models (sic `load_data`).
LOAD_DATA_FORMAT = "%m/%d/%Y %H:%M:%S"


async def load_model(request: Request, services: ServicesDep, caller: AdminDep, params: ParamsDep) -> dict[str, Any]:
    plan = plan_load_model(validate_request(LoadModelRequest, params.values), services.settings)
    return await _start_load(request, services, caller, plan, LOAD_STARTED)


async def load_model_v2(request: Request, services: ServicesDep, caller: AdminDep, params: ParamsDep) -> dict[str, Any]:
    plan = plan_load_model_v2(validate_request(LoadModelV2Request, params.values), services.settings)
    return await _start_load(request, services, caller, plan, LOAD_STARTED)


async def load_vae(request: Request, services: ServicesDep, caller: AdminDep, params: ParamsDep) -> dict[str, Any]:
    plan = plan_load_vae(validate_request(LoadVaeRequest, params.values), services.settings)
    return await _start_load(request, services, caller, plan, VAE_LOAD_STARTED)


async def verify_model(services: ServicesDep, caller: CallerDep, params: ParamsDep) -> dict[str, Any]:
    model_id = validate_request(VerifyModelRequest, params.values).model_id
    if not await run_in_threadpool(services.models.knows, model_id):
        raise ModelNotFoundError.for_id(model_id)
    reply: dict[str, Any] = {"status": "success", "message": "Model exists on server"}
    if await run_in_threadpool(services.models.exists, model_id):
        # Extra fields: whether the generation model can run here and what, so a client learns it before generating.
        detected = await run_in_threadpool(services.models.family, model_id)
        reply |= family_fields(detected)
        if detected.info is not None:
            capabilities = model_capabilities(detected.info)
            reply["runs"] = [kind.value for kind in JobKind if kind in capabilities.kinds]
            reply["schedulers"] = sorted(capabilities.schedulers)
    return reply


async def get_all_models(services: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    def listing() -> list[dict[str, Any]]:
        return [
            _public(entry) | family_fields(services.models.entry_family(entry))
            for entry in services.models.all_models()
        ]

    return {"status": "success", "models": await run_in_threadpool(listing)}


def family_fields(detected: Detected) -> dict[str, Any]:
    """`family` (None: unknown), the prediction type and few-step hint, and `supported: false` with the reason for
    files of no supported layout."""
    info = detected.info
    fields: dict[str, Any] = {
        "family": info.family.value if info else None,
        "prediction_type": info.prediction_type.value if info and info.prediction_type else None,
        "few_step": info.few_step.value if info and info.few_step else None,
    }
    if detected.unsupported is not None:
        fields |= {"family": "unsupported", "supported": False, "unsupported_reason": detected.unsupported}
    return fields


async def delete_model(services: ServicesDep, caller: AdminDep, params: ParamsDep) -> dict[str, Any]:
    request = validate_request(DeleteModelRequest, params.values)
    only = kind_for_type(request.model_type)
    deleted = await run_in_threadpool(_delete, services, request.model_id, only)
    if not deleted:
        raise ModelNotFoundError.for_id(request.model_id)
    return {
        "status": "success",
        "message": "Model deleted successfully",
        "model_id": request.model_id,
        "deleted": [kind.value for kind in deleted],
    }


async def _start_load(
    request: Request, services: Services, caller: ApiKey, plan: LoadPlan, message: str
) -> dict[str, Any]:
    """Register the model as loading, then queue the job that loads it; the worker keeps the row current."""
    registry = services.registry
    await run_in_threadpool(
        lambda: registry.begin_load(plan.kind, plan.model_id, source=plan.shown_source, format=plan.format)
    )
    meta = {"model_id": plan.model_id, "model_type": plan.kind.value, "source": plan.shown_source}
    spec = JobSpec(
        owner_key_id=caller.id,
        kind=JobKind.MODEL_LOAD,
        model_id=plan.model_id,
        params=ModelLoadParams(
            model_kind=plan.kind.value, source_type=plan.source_type, source=plan.source, revision=plan.revision
        ),
        output_keys=(),
        future_links=(),
        webhook_url=plan.webhook,
        track_id=plan.track_id,
        max_attempts=services.settings.job_max_attempts,
        reply=JobReply(fetch_prefix=family_prefix(request.url.path), meta=meta),
    )
    try:
        job = await submit_job(services, spec)
    except SdError as exc:
        await run_in_threadpool(registry.mark_failed, plan.kind, plan.model_id, f"Not queued: {exc.message}")
        raise
    await run_in_threadpool(registry.attach_job, plan.kind, plan.model_id, job.id)
    return {
        "status": "success",
        "message": message,
        "id": job.id,
        "model_id": plan.model_id,
        "model_type": plan.kind.value,
        "state": ModelState.LOADING.value,
        "fetch_result": fetch_url_for(services.settings.external_base_url, job),
    }


def _delete(services: Services, model_id: str, only: ModelKind | None) -> list[ModelKind]:
    """Cancel a load in progress, drop the rows and remove the files; returns the kinds that were deleted."""
    kinds = [kind for kind in services.models.kinds_of(model_id) if only is None or kind is only]
    for kind in kinds:
        record = services.registry.get(kind, model_id)
        if record is not None and record.state is ModelState.LOADING and record.job_id is not None:
            services.jobs.cancel(record.job_id, owner_key_id=None)
        services.registry.delete(kind, model_id)
        # Blobs stay (content-addressed, maybe shared); workers that pulled the model drop their copy on next use.
        ManifestStore(services.engine).delete(kind, model_id)
        remove_model_files(services.models.models_dir, kind, model_id)
        waiting = _JOBS_NEEDING.get(kind)
        if waiting and kind not in services.models.kinds_of(model_id):
            # No worker would ever claim these: they fail now, like a request for an unknown model would.
            services.jobs.fail_queued_for_model(
                model_id, waiting, code=JobErrorCode.MODEL_NOT_FOUND, message="Model id not found (it was deleted)"
            )
    return kinds


# The queued jobs that wait for a model of this kind (add-ons fail at run time with their own message).
_JOBS_NEEDING: dict[ModelKind, tuple[JobKind, ...]] = {
    ModelKind.CHECKPOINT: (JobKind.TEXT2IMG, JobKind.IMG2IMG, JobKind.INPAINT, JobKind.CONTROLNET),
    ModelKind.UPSCALER: (JobKind.SUPER_RESOLUTION,),
}


def _public(entry: ModelEntry) -> dict[str, Any]:
    record = entry.record
    when = entry.loaded_at or (record.created_at if record is not None else None)
    return {
        "model_id": entry.model_id,
        "model_type": entry.kind.value,
        "state": entry.state.value,
        "load_data": when.strftime(LOAD_DATA_FORMAT) if when is not None else "",
        "progress": record.progress_percent if record is not None else 100.0,
        "bytes_done": record.bytes_done if record is not None else 0,
        "bytes_total": record.bytes_total if record is not None else 0,
        "message": record.message if record is not None else "",
        "id": record.job_id if record is not None else None,
    }


Handler = Callable[..., Coroutine[Any, Any, dict[str, Any]]]
_ENDPOINTS: tuple[tuple[str, Handler, type[BaseModel] | None, tuple[str, ...], str, Replies], ...] = (
    ("load_model", load_model, LoadModelRequest, ("POST",), "Load a model (admin)", LOAD_REPLIES),
    (
        "load_model_v2",
        load_model_v2,
        LoadModelV2Request,
        ("POST",),
        "Load a model by category and format (admin)",
        LOAD_REPLIES,
    ),
    ("load_vae", load_vae, LoadVaeRequest, ("POST",), "Load a VAE (admin)", LOAD_REPLIES),
    ("verify_model", verify_model, VerifyModelRequest, ("POST",), "Say whether a model id exists", VERIFY_REPLIES),
    ("get_all_models", get_all_models, None, ("GET", "POST"), "List models with their load state", ALL_MODELS_REPLIES),
    ("delete_model", delete_model, DeleteModelRequest, ("POST",), "Delete a model's files (admin)", DELETE_REPLIES),
)


def _register() -> None:
    for name, handler, schema, methods, summary, replies in _ENDPOINTS:
        paths = [f"{prefix}/{name}" for prefix in MODEL_PREFIXES]
        add_alias_routes(
            router,
            paths,
            handler,
            summary=summary,
            replies=replies,
            body=schema,
            methods=methods,
            documented=methods,
            operation_id=name,
        )


_register()
