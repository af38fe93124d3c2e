"""The ControlNet endpoint on the job spine, under every alias path (`CONTROLNET_PATHS`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from sdserver.api.aliases import CONTROLNET_PATHS, add_alias_routes, family_prefix
from sdserver.api.client_images import store_client_image
from sdserver.api.deps import CallerDep, ParamsDep, ServicesDep
from sdserver.api.family_checks import require_runnable
from sdserver.api.fields import validate_request
from sdserver.api.job_flow import allocate_outputs
from sdserver.api.reply_docs.jobs import JOB_REPLIES
from sdserver.api.routes.generation import check_addons_exist, model_id_for, submit_generation
from sdserver.api.schemas_controlnet import ControlNetRequest, ResolvedControlNet, controlnet_mode, resolve_controlnet
from sdserver.api.schemas_generation import ResolvedGeneration
from sdserver.api.services import Services
from sdserver.auth import ApiKey
from sdserver.catalog.registry import ModelKind, ModelState
from sdserver.job_params import ControlNetMode, JobReply
from sdserver.jobs import JobKind

router = APIRouter(tags=["generation"])

# The image fields, in the order they are stored.
_IMAGE_FIELDS = ("init_image", "control_image", "mask_image")
# The generation kind each ControlNet mode needs of the model's family.
_MODE_KINDS = {
    ControlNetMode.TEXT2IMG: JobKind.TEXT2IMG,
    ControlNetMode.IMG2IMG: JobKind.IMG2IMG,
    ControlNetMode.INPAINT: JobKind.INPAINT,
}


async def controlnet(request: Request, services: ServicesDep, caller: CallerDep, params: ParamsDep) -> dict[str, Any]:
    body = validate_request(ControlNetRequest, params.values)
    model_id = model_id_for(services, body.model_id)
    family = await run_in_threadpool(
        require_runnable, services.models, model_id, _MODE_KINDS[controlnet_mode(body)], controlnet=True
    )
    resolved, control = await run_in_threadpool(
        lambda: resolve_controlnet(
            body,
            model_id=model_id,
            controlnet_exists=lambda controlnet_id: (
                services.models.addon_state(ModelKind.CONTROLNET, controlnet_id) is ModelState.READY
            ),
            enhance_suffix=services.settings.enhance_prompt_suffix,
            family=family,
        )
    )
    await run_in_threadpool(check_addons_exist, services, resolved, family)
    reply = _reply(resolved, control, body, request.url.path)
    run = control.job_params(resolved.params, await _input_keys(services, body, caller))
    keys, links = allocate_outputs(services, resolved.params.samples, temp=resolved.temp)
    return await submit_generation(services, caller, JobKind.CONTROLNET, resolved, (run, reply), (keys, links))


async def _input_keys(services: Services, body: ControlNetRequest, caller: ApiKey) -> dict[str, str]:
    """Store each image the request gave (checked, SSRF-guarded) where workers read them; keys by field."""
    keys: dict[str, str] = {}
    for field in _IMAGE_FIELDS:
        value = getattr(body, field)
        if value is not None:
            # Kept 24 h: long enough for any queued job, then purged with other temporary uploads.
            saved, _ = await store_client_image(
                services, value, field=field, owner=caller, endpoint="job_input", temp=True
            )
            keys[field] = saved.object_key
    return keys


def _reply(resolved: ResolvedGeneration, control: ResolvedControlNet, body: ControlNetRequest, path: str) -> JobReply:
    meta = resolved.meta() | control.meta()
    for field in _IMAGE_FIELDS:
        value = getattr(body, field)
        if value is not None:
            # URLs are echoed; inline image data would bloat every reply.
            meta[field] = value if value.startswith("http") else "<base64>"
    return JobReply(fetch_prefix=family_prefix(path), meta=meta, base64=resolved.base64)


add_alias_routes(
    router,
    CONTROLNET_PATHS,
    controlnet,
    summary="ControlNet generation (text2img, img2img or inpaint steered by control images)",
    body=ControlNetRequest,
    replies=JOB_REPLIES,
)
