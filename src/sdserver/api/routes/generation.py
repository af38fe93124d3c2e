"""Generation endpoints on the job spine: validate, submit with outputs allocated, wait briefly, answer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from sdserver.api.aliases import TEXT2IMG_PATHS, family_prefix
from sdserver.api.deps import CallerDep, ParamsDep, ServicesDep
from sdserver.api.fields import validate_request
from sdserver.api.job_flow import allocate_outputs, render_job, submit_job, wait_for_job
from sdserver.api.schemas import openapi_body
from sdserver.api.schemas_generation import Text2ImgRequest, resolve_text2img
from sdserver.api.services import Services
from sdserver.errors import ModelNotFoundError, ValidationError
from sdserver.jobs import JobKind, JobSpec

router = APIRouter(tags=["generation"])


def _model_id(services: Services, requested: str | None) -> str:
    model_id = requested or services.settings.default_model_id
    if not model_id:
        raise ValidationError.for_field("model_id", "is required (no default model is configured)", requested)
    if not services.models.exists(model_id):
        raise ModelNotFoundError()
    return model_id


async def text2img(request: Request, services: ServicesDep, caller: CallerDep, params: ParamsDep) -> dict[str, Any]:
    body = validate_request(Text2ImgRequest, params.values)
    model_id = _model_id(services, body.model_id)
    resolved = resolve_text2img(body, default_model=model_id)
    keys, links = allocate_outputs(services, resolved.samples, temp=resolved.temp)
    spec = JobSpec(
        owner_key_id=caller.id,
        kind=JobKind.TEXT2IMG,
        model_id=model_id,
        params={
            "prompt": resolved.prompt,
            "negative_prompt": resolved.negative_prompt,
            "num_inference_steps": resolved.steps,
            "guidance_scale": resolved.guidance_scale,
            "seed": resolved.seed,
            "samples": resolved.samples,
            "base64": resolved.base64,
            "fetch_prefix": family_prefix(request.url.path),
            "meta": resolved.meta(),
        },
        output_keys=keys,
        future_links=links,
        width=resolved.width,
        height=resolved.height,
        steps=resolved.steps,
        scheduler=resolved.scheduler,
        webhook_url=resolved.webhook,
        track_id=resolved.track_id,
        max_attempts=services.settings.job_max_attempts,
    )
    job = await submit_job(services, spec)
    if not resolved.instant_response:
        job = await wait_for_job(services, job, services.settings.sync_wait_s)
    return await render_job(services, job)


def _register() -> None:
    for index, path in enumerate(TEXT2IMG_PATHS):
        router.add_api_route(
            path,
            text2img,
            methods=["POST"],
            include_in_schema=index == 0,
            summary="Text to image",
            openapi_extra=openapi_body(Text2ImgRequest),
        )


_register()
