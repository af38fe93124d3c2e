"""The image-editing endpoints on the job spine: outpaint (extend the canvas), object_removal and inpaint (mask
driven), each an inpainting job on the requested or default model; removebg_mask answers that it is unavailable."""

from __future__ import annotations

from dataclasses import replace
from pathlib import PurePosixPath
from typing import Any

from fastapi import APIRouter, Request
from PIL import Image
from starlette.concurrency import run_in_threadpool

from sdserver.api.aliases import (
    EDITING_INPAINT_PATHS,
    OBJECT_REMOVAL_PATHS,
    OUTPAINT_PATHS,
    REMOVEBG_MASK_PATHS,
    add_alias_routes,
    family_prefix,
)
from sdserver.api.deps import CallerDep, ParamsDep, ServicesDep
from sdserver.api.editing_canvas import canvas_side, fit_to_blocks, outpaint_canvas, parse_alignment
from sdserver.api.family_checks import require_runnable
from sdserver.api.fields import validate_request
from sdserver.api.job_flow import allocate_outputs
from sdserver.api.reply_docs.declare import BASE_CODES, Replies
from sdserver.api.reply_docs.envelopes import ErrorEnvelope
from sdserver.api.reply_docs.jobs import JOB_REPLIES
from sdserver.api.routes.generation import check_addons_exist, model_id_for, submit_generation
from sdserver.api.schemas_editing import (
    OBJECT_REMOVAL_NEGATIVE,
    OBJECT_REMOVAL_PROMPT,
    OUTPAINT_PROMPT,
    EditingRequest,
    EditInpaintRequest,
    EditMode,
    ObjectRemovalRequest,
    OutpaintRequest,
    edit_strength,
    overlap_width,
)
from sdserver.api.schemas_family import MIN_SIDE, plan_family
from sdserver.api.schemas_generation import resolve_generation
from sdserver.api.schemas_passes import with_passes
from sdserver.api.services import Services
from sdserver.auth import ApiKey
from sdserver.errors import FeatureUnavailableError, ValidationError
from sdserver.images import DecodedImage, encode_image, load_image_input
from sdserver.job_params import JobReply
from sdserver.jobs import JobKind

router = APIRouter(tags=["image editing"])

REMOVEBG_MESSAGE = (
    "removebg_mask needs a segmentation model, and none under a permissive licence ships inside a Python wheel "
    "this server could use; cut the background with your own tool and send the mask to inpaint or object_removal"
)


async def _decode(services: Services, value: str, field: str) -> DecodedImage:
    return await load_image_input(
        value, field=field, limits=services.image_limits, policy=services.fetch_policy, issued=services.objects
    )


async def _store(services: Services, image: DecodedImage, caller: ApiKey) -> str:
    # Kept 24 h, like every job input: long enough for any queued job, then purged with other temporary uploads.
    saved = await run_in_threadpool(
        services.uploads.save, services.objects, image, owner=caller, endpoint="job_input", temp=True
    )
    return saved.object_key


def _as_png(image: Image.Image) -> DecodedImage:
    return DecodedImage(data=encode_image(image, "png"), format="png", width=image.width, height=image.height)


async def _edit(
    mode: EditMode, schema: type[EditingRequest], request: Request, services: Services, caller: ApiKey, values: Any
) -> dict[str, Any]:
    body = validate_request(schema, values)
    model_id = model_id_for(services, body.model_id)
    family = await run_in_threadpool(require_runnable, services.models, model_id, JobKind.INPAINT)
    image = await _decode(services, body.init_image, "init_image")
    mask: DecodedImage | None = None
    plan = plan_family(family)
    if isinstance(body, OutpaintRequest):
        # A side the request leaves out stays the image's own: `width: 1024` alone widens the picture.
        if body.width is None:
            body.width = canvas_side(image.width, plan.side_multiple, MIN_SIDE, plan.max_side)
        if body.height is None:
            body.height = canvas_side(image.height, plan.side_multiple, MIN_SIDE, plan.max_side)
    if isinstance(body, ObjectRemovalRequest):
        mask = await _decode(services, body.mask_image, "mask_image")
        if (mask.width, mask.height) != (image.width, image.height):
            rule = f"must be the size of init_image ({image.width}x{image.height})"
            raise ValidationError.for_field("mask_image", rule, f"{mask.width}x{mask.height}")
        plan = plan_family(family)
        body.width, body.height = fit_to_blocks(
            (image.width, image.height), plan.max_side, plan.side_multiple, MIN_SIDE
        )
    _default_prompts(mode, body)
    resolved = resolve_generation(
        body, model_id=model_id, enhance_suffix=services.settings.enhance_prompt_suffix, from_image=True, family=family
    )
    resolved = with_passes(resolved, body, JobKind.INPAINT, family)
    await run_in_threadpool(check_addons_exist, services, resolved, family)
    meta_extra: dict[str, Any] = {}
    if isinstance(body, OutpaintRequest):
        alignment, overlap = parse_alignment(body.alignment), overlap_width(body.overlap_width)
        source = await run_in_threadpool(image.to_pil)
        canvas = await run_in_threadpool(outpaint_canvas, source, (resolved.width, resolved.height), alignment, overlap)
        init_key = await _store(services, await run_in_threadpool(_as_png, canvas.image), caller)
        mask_key = await _store(services, await run_in_threadpool(_as_png, canvas.mask), caller)
        passes = replace(resolved.params.passes, keep_box=canvas.keep)
        meta_extra = {"alignment": alignment, "overlap_width": overlap, "kept_area": list(canvas.keep)}
    else:
        assert mask is not None
        init_key, mask_key = await _store(services, image, caller), await _store(services, mask, caller)
        passes = resolved.params.passes
    params = replace(
        resolved.params,
        init_image_key=init_key,
        mask_image_key=mask_key,
        strength=edit_strength(body.strength),
        passes=passes,
    )
    resolved = replace(resolved, params=params)
    keys, links = allocate_outputs(services, params.samples, temp=resolved.temp)
    meta = resolved.meta() | meta_extra
    meta["init_image"] = body.init_image if body.init_image.startswith("http") else "<base64>"
    meta["file_prefix"] = PurePosixPath(keys[0]).stem if keys else None
    reply = JobReply(fetch_prefix=family_prefix(request.url.path), meta=meta, base64=resolved.base64)
    return await submit_generation(services, caller, JobKind.INPAINT, resolved, (params, reply), (keys, links))


def _default_prompts(mode: EditMode, body: EditingRequest) -> None:
    """The prompts an edit runs with when the request has none; edits never get the server's prompt suffix unless
    the request asks for it (`enhance_prompt: yes`)."""
    if mode is EditMode.OBJECT_REMOVAL:
        body.prompt = body.prompt or OBJECT_REMOVAL_PROMPT
        body.negative_prompt = body.negative_prompt or OBJECT_REMOVAL_NEGATIVE
    elif mode is EditMode.OUTPAINT:
        body.prompt = body.prompt or OUTPAINT_PROMPT
    if body.enhance_prompt is None:
        body.enhance_prompt = False


async def outpaint(request: Request, services: ServicesDep, caller: CallerDep, params: ParamsDep) -> dict[str, Any]:
    return await _edit(EditMode.OUTPAINT, OutpaintRequest, request, services, caller, params.values)


async def object_removal(
    request: Request, services: ServicesDep, caller: CallerDep, params: ParamsDep
) -> dict[str, Any]:
    return await _edit(EditMode.OBJECT_REMOVAL, ObjectRemovalRequest, request, services, caller, params.values)


async def inpaint(request: Request, services: ServicesDep, caller: CallerDep, params: ParamsDep) -> dict[str, Any]:
    return await _edit(EditMode.INPAINT, EditInpaintRequest, request, services, caller, params.values)


async def removebg_mask(caller: CallerDep) -> dict[str, Any]:
    raise FeatureUnavailableError(REMOVEBG_MESSAGE)


# Editing jobs answer like any job; removebg_mask only ever answers its clear refusal.
REMOVEBG_REPLIES = Replies(ok=ErrorEnvelope, codes=(*BASE_CODES, FeatureUnavailableError.code))

add_alias_routes(
    router, OUTPAINT_PATHS, outpaint, summary="Outpaint: extend the canvas", body=OutpaintRequest, replies=JOB_REPLIES
)
add_alias_routes(
    router,
    OBJECT_REMOVAL_PATHS,
    object_removal,
    summary="Remove what the mask covers",
    body=ObjectRemovalRequest,
    replies=JOB_REPLIES,
)
add_alias_routes(
    router,
    EDITING_INPAINT_PATHS,
    inpaint,
    summary="Inpaint what the mask covers",
    body=EditInpaintRequest,
    replies=JOB_REPLIES,
)
add_alias_routes(
    router, REMOVEBG_MASK_PATHS, removebg_mask, summary="Background mask (unavailable)", replies=REMOVEBG_REPLIES
)
