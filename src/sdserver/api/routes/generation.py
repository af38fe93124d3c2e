"""Generation endpoints on the job spine: text2img, img2img and inpaint under every alias family."""

from __future__ import annotations

from dataclasses import replace
from pathlib import PurePosixPath
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from sdserver.api.addons import require_addons, require_lora_families
from sdserver.api.aliases import IMG2IMG_PATHS, INPAINT_PATHS, TEXT2IMG_PATHS, add_alias_routes, family_prefix
from sdserver.api.client_images import store_client_image
from sdserver.api.deps import CallerDep, ParamsDep, ServicesDep
from sdserver.api.family_checks import require_runnable
from sdserver.api.fields import validate_request
from sdserver.api.job_flow import allocate_outputs, run_job
from sdserver.api.reply_docs.jobs import JOB_REPLIES
from sdserver.api.schemas_generation import (
    Img2ImgRequest,
    InpaintRequest,
    ResolvedGeneration,
    Text2ImgRequest,
    resolve_generation,
)
from sdserver.api.schemas_passes import with_passes
from sdserver.api.services import Services
from sdserver.auth import ApiKey
from sdserver.catalog.families import FamilyInfo
from sdserver.catalog.registry import ModelKind
from sdserver.errors import ModelNotFoundError, ValidationError
from sdserver.job_params import GenerationParams, JobParams, JobReply
from sdserver.jobs import JobKind, JobSpec

router = APIRouter(tags=["generation"])


def model_id_for(services: Services, requested: str | None) -> str:
    """The model a generation request runs on; it must exist. Without one: SDSERVER_DEFAULT_MODEL_ID, else the
    default persisted in the database (set by the first `models make-tiny`), so legacy v3 clients work."""
    model_id = requested or services.settings.default_model_id or services.control.load_default_model()
    if not model_id:
        raise ValidationError.for_field(
            "model_id", "is required (no default model: set SDSERVER_DEFAULT_MODEL_ID)", requested
        )
    if not services.models.exists(model_id):
        raise ModelNotFoundError.for_id(model_id)
    return model_id


def check_addons_exist(services: Services, resolved: ResolvedGeneration, family: FamilyInfo | None = None) -> None:
    """Every LoRA, VAE and embedding id the request names must be loaded now, and each LoRA must fit the model's
    family (a clear error beats a failed job)."""
    models, params = services.models, resolved.params
    loras = [lora for lora, _ in params.loras]
    require_addons(models, ModelKind.LORA, "lora_model", loras)
    require_addons(models, ModelKind.VAE, "vae", [params.vae] if params.vae else [])
    require_addons(models, ModelKind.EMBEDDINGS, "embeddings_model", list(params.embeddings))
    require_lora_families(models, resolved.model_id, family, loras)


async def _with_input_images(
    services: Services, params: GenerationParams, body: Text2ImgRequest, caller: ApiKey
) -> GenerationParams:
    """Store the init and mask images (checked, SSRF-guarded) where workers read them; the params name their keys."""
    if isinstance(body, InpaintRequest):
        init = await _store_input(services, body.init_image, "init_image", caller)
        mask = await _store_input(services, body.mask_image, "mask_image", caller)
        return replace(params, init_image_key=init, mask_image_key=mask)
    if isinstance(body, Img2ImgRequest):
        return replace(params, init_image_key=await _store_input(services, body.init_image, "init_image", caller))
    return params


async def _store_input(services: Services, value: str, field: str, caller: ApiKey) -> str:
    # Kept 24 h: long enough for any queued job, then purged with other temporary uploads.
    saved, _ = await store_client_image(services, value, field=field, owner=caller, endpoint="job_input", temp=True)
    return saved.object_key


def _reply(resolved: ResolvedGeneration, body: Text2ImgRequest, path: str, keys: tuple[str, ...]) -> JobReply:
    meta = resolved.meta()
    if isinstance(body, Img2ImgRequest):
        meta["init_image"] = body.init_image if body.init_image.startswith("http") else "<base64>"
    # The vendor's meta names the output files by a shared prefix; ours is the first output's unique name.
    meta["file_prefix"] = PurePosixPath(keys[0]).stem if keys else None
    return JobReply(fetch_prefix=family_prefix(path), meta=meta, base64=resolved.base64)


async def prepare_generation(
    kind: JobKind, schema: type[Text2ImgRequest], path: str, services: Services, caller: ApiKey, values: Any
) -> tuple[JobSpec, ResolvedGeneration]:
    """Validate a generation request, store its input images and build its job, as if it came in on `path`
    (the other API dialects submit through here too)."""
    body = validate_request(schema, values)
    model_id = model_id_for(services, body.model_id)
    family = await run_in_threadpool(require_runnable, services.models, model_id, kind)
    resolved = resolve_generation(
        body, model_id=model_id, enhance_suffix=services.settings.enhance_prompt_suffix, family=family
    )
    resolved = with_passes(resolved, body, kind, family)
    await run_in_threadpool(check_addons_exist, services, resolved, family)
    keys, links = allocate_outputs(services, resolved.params.samples, temp=resolved.temp)
    reply = _reply(resolved, body, path, keys)
    params = await _with_input_images(services, resolved.params, body, caller)
    return generation_spec(services, caller, kind, resolved, (params, reply), (keys, links)), resolved


async def _generate(
    kind: JobKind, schema: type[Text2ImgRequest], request: Request, services: Services, caller: ApiKey, values: Any
) -> dict[str, Any]:
    spec, resolved = await prepare_generation(kind, schema, request.url.path, services, caller, values)
    return await run_job(services, spec, instant_response=resolved.instant_response)


async def submit_generation(
    services: Services,
    caller: ApiKey,
    kind: JobKind,
    resolved: ResolvedGeneration,
    job: tuple[JobParams, JobReply],
    outputs: tuple[tuple[str, ...], tuple[str, ...]],
) -> dict[str, Any]:
    """Queue a generation job (any kind, ControlNet too) with its params, reply echo and allocated outputs, and
    answer as the spine does."""
    spec = generation_spec(services, caller, kind, resolved, job, outputs)
    return await run_job(services, spec, instant_response=resolved.instant_response)


def generation_spec(
    services: Services,
    caller: ApiKey,
    kind: JobKind,
    resolved: ResolvedGeneration,
    job: tuple[JobParams, JobReply],
    outputs: tuple[tuple[str, ...], tuple[str, ...]],
) -> JobSpec:
    """The job of a validated generation request: its params, reply echo and allocated outputs."""
    (params, reply), (keys, links) = job, outputs
    return JobSpec(
        owner_key_id=caller.id,
        kind=kind,
        model_id=resolved.model_id,
        params=params,
        output_keys=keys,
        future_links=links,
        width=resolved.width,
        height=resolved.height,
        steps=resolved.params.steps,
        scheduler=resolved.params.scheduler.class_name,
        webhook_url=resolved.webhook,
        track_id=resolved.track_id,
        max_attempts=services.settings.job_max_attempts,
        reply=reply,
    )


async def text2img(request: Request, services: ServicesDep, caller: CallerDep, params: ParamsDep) -> dict[str, Any]:
    return await _generate(JobKind.TEXT2IMG, Text2ImgRequest, request, services, caller, params.values)


async def img2img(request: Request, services: ServicesDep, caller: CallerDep, params: ParamsDep) -> dict[str, Any]:
    return await _generate(JobKind.IMG2IMG, Img2ImgRequest, request, services, caller, params.values)


async def inpaint(request: Request, services: ServicesDep, caller: CallerDep, params: ParamsDep) -> dict[str, Any]:
    return await _generate(JobKind.INPAINT, InpaintRequest, request, services, caller, params.values)


add_alias_routes(router, TEXT2IMG_PATHS, text2img, summary="Text to image", body=Text2ImgRequest, replies=JOB_REPLIES)
add_alias_routes(router, IMG2IMG_PATHS, img2img, summary="Image to image", body=Img2ImgRequest, replies=JOB_REPLIES)
add_alias_routes(
    router,
    INPAINT_PATHS,
    inpaint,
    summary="Inpainting (white in the mask is repainted)",
    body=InpaintRequest,
    replies=JOB_REPLIES,
)
