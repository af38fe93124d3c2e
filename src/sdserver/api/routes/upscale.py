"""Super resolution on the job spine: the input is checked and stored, a worker upscales it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from sdserver.api.aliases import (
    SUPER_RESOLUTION_LIST_PATHS,
    SUPER_RESOLUTION_STRING_PATHS,
    add_alias_routes,
    family_prefix,
)
from sdserver.api.client_images import store_client_image
from sdserver.api.deps import CallerDep, ParamsDep, ServicesDep
from sdserver.api.fields import validate_request
from sdserver.api.job_flow import allocate_outputs, run_job
from sdserver.api.reply_docs.jobs import JOB_REPLIES
from sdserver.api.schemas_upscale import ResolvedSuperResolution, SuperResolutionRequest, resolve_super_resolution
from sdserver.api.services import Services
from sdserver.auth import ApiKey
from sdserver.errors import ModelNotFoundError
from sdserver.job_params import JobReply, SuperResolutionParams
from sdserver.jobs import JobKind, JobSpec

router = APIRouter(tags=["super resolution"])


async def super_resolution(
    request: Request, services: ServicesDep, caller: CallerDep, params: ParamsDep
) -> dict[str, Any]:
    spec, resolved = await prepare_super_resolution(request.url.path, services, caller, params.values)
    return await run_job(services, spec, instant_response=resolved.instant_response)


async def prepare_super_resolution(
    path: str, services: Services, caller: ApiKey, values: dict[str, Any]
) -> tuple[JobSpec, ResolvedSuperResolution]:
    """Validate an upscale request, store its image and build its job, as if it came in on `path` (the other API
    dialects submit through here too)."""
    resolved = resolve_super_resolution(validate_request(SuperResolutionRequest, values))
    if not services.models.upscaler_exists(resolved.model_id):
        raise ModelNotFoundError.for_id(resolved.model_id)
    saved, image = await store_client_image(
        services,
        resolved.image,
        field=resolved.image_field,
        owner=caller,
        endpoint="job_input",
        temp=True,
        max_pixels=services.settings.max_upscale_input_pixels,
    )
    keys, links = allocate_outputs(services, 1, temp=resolved.temp)
    meta = {
        "model_id": resolved.model_id,
        "scale": resolved.scale,
        "face_enhance": "yes" if resolved.face_enhance else "no",
        "init_image": resolved.image if resolved.image.startswith("http") else "<base64>",
    }
    spec = JobSpec(
        owner_key_id=caller.id,
        kind=JobKind.SUPER_RESOLUTION,
        model_id=resolved.model_id,
        params=SuperResolutionParams(
            input_key=saved.object_key, scale=resolved.scale, face_enhance=resolved.face_enhance
        ),
        output_keys=keys,
        future_links=links,
        width=image.width,
        height=image.height,
        webhook_url=resolved.webhook,
        track_id=resolved.track_id,
        max_attempts=services.settings.job_max_attempts,
        reply=JobReply(
            fetch_prefix=family_prefix(path),
            meta=meta,
            base64=resolved.base64,
            single_output=path in SUPER_RESOLUTION_STRING_PATHS,
        ),
    )
    return spec, resolved


add_alias_routes(
    router,
    SUPER_RESOLUTION_STRING_PATHS + SUPER_RESOLUTION_LIST_PATHS,
    super_resolution,
    summary="Upscale an image with Real-ESRGAN",
    body=SuperResolutionRequest,
    replies=JOB_REPLIES,
)
