"""AUTOMATIC1111's /sdapi/v1 on the job spine: txt2img, img2img, extra-single-image (synchronous, like A1111),
progress and interrupt (the caller's jobs only), sd-models, samplers, upscalers, options, png-info, scripts."""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from sdserver.api.aliases import IMG2IMG_PATHS, INPAINT_PATHS, SUPER_RESOLUTION_LIST_PATHS, TEXT2IMG_PATHS
from sdserver.api.deps import ParamsDep, ServicesDep
from sdserver.api.dialect_errors import rename_fields
from sdserver.api.dialects.a1111_info import PARAMETERS_KEY, generation_info, parse_parameters, png_text
from sdserver.api.dialects.a1111_schemas import (
    EmbeddingsReply,
    ExtraSingleImageReply,
    ExtraSingleImageRequest,
    ImagesReply,
    Img2ImgRequest,
    InterruptReply,
    OptionsReply,
    PngInfoReply,
    PngInfoRequest,
    ProgressReply,
    ScriptsReply,
    Txt2ImgRequest,
    checkpoint_id,
    native_fields,
)
from sdserver.api.dialects.keys import dialect_caller
from sdserver.api.dialects.openai_masks import png_data_url
from sdserver.api.dialects.sync_jobs import read_outputs, run_to_end
from sdserver.api.fields import validate_request
from sdserver.api.job_replies import job_meta
from sdserver.api.routes.generation import prepare_generation
from sdserver.api.routes.upscale import prepare_super_resolution
from sdserver.api.schemas_generation import Img2ImgRequest as NativeImg2Img
from sdserver.api.schemas_generation import InpaintRequest as NativeInpaint
from sdserver.api.schemas_generation import Text2ImgRequest as NativeText2Img
from sdserver.api.services import Services
from sdserver.auth import ApiKey
from sdserver.catalog.ids import DEFAULT_UPSCALER, UPSCALER_MODELS
from sdserver.catalog.registry import ModelKind, ModelState
from sdserver.catalog.schedulers import A1111_ALIASES
from sdserver.errors import ForbiddenError, ModelNotFoundError, SdError, ValidationError
from sdserver.images import decode_base64_payload, inspect_image
from sdserver.jobs import Job, JobKind, JobSpec, JobStatus

router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111 API"])
CallerDep = Annotated[ApiKey, Depends(dialect_caller)]
DEFAULT_UPSCALE = 2.0
CHECKPOINT_EXTENSIONS = frozenset({"safetensors", "ckpt", "pt", "bin"})
# Native field names in errors -> the A1111 names the client sent.
NATIVE_NAMES = {
    "init_image": "init_images",
    "mask_image": "mask",
    "scheduler": "sampler_name",
    "num_inference_steps": "steps",
    "guidance_scale": "cfg_scale",
    "samples": "batch_size",
    "strength": "denoising_strength",
    "model_id": "override_settings.sd_model_checkpoint",
    "lora_model": "prompt",
    "lora_strength": "prompt",
}


def _images_reply(request: Txt2ImgRequest, values: dict[str, Any], job: Job, images: list[bytes]) -> dict[str, Any]:
    meta = job_meta(job)
    infotexts = [png_text(image).get(PARAMETERS_KEY, "") for image in images]
    sampler = request.sampler_name or request.sampler_index or _a1111_sampler(job.scheduler)
    # A1111 echoes the request with its defaults, without the (large) input images; never a key.
    parameters = request.model_dump() | values | {"init_images": None, "mask": None}
    parameters.pop("key", None)
    info = generation_info(job, meta, infotexts, sampler)
    return {
        "images": [base64.b64encode(image).decode() for image in images] if request.send_images is not False else [],
        "parameters": parameters,
        "info": json.dumps(info),
    }


def _a1111_sampler(scheduler_class: str) -> str:
    names = [name for name, (cls, karras, _) in A1111_ALIASES.items() if cls == scheduler_class and not karras]
    return names[0] if names else scheduler_class


def _model_checked(services: Services, native: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint an A1111 client names, as a model id here: a file name's extension is dropped if needed."""
    model = native.get("model_id")
    if model is None or services.models.exists(model):
        return native
    stem, dot, extension = model.rpartition(".")
    if dot and extension.lower() in CHECKPOINT_EXTENSIONS and services.models.exists(stem):
        return native | {"model_id": stem}
    raise ModelNotFoundError.for_id(model, field="override_settings.sd_model_checkpoint")


async def txt2img(services: ServicesDep, caller: CallerDep, params: ParamsDep) -> dict[str, Any]:
    request = validate_request(Txt2ImgRequest, params.values)
    native = _model_checked(services, native_fields(request))
    spec = await _prepared(JobKind.TEXT2IMG, NativeText2Img, TEXT2IMG_PATHS[0], services, caller, native)
    job = await run_to_end(services, spec)
    images = await read_outputs(services, job)
    return await run_in_threadpool(_images_reply, request, params.values, job, images)


async def img2img(services: ServicesDep, caller: CallerDep, params: ParamsDep) -> dict[str, Any]:
    """The first of `init_images` redrawn; with `mask`, inpainted where the mask is white."""
    request = validate_request(Img2ImgRequest, params.values)
    native = _model_checked(services, native_fields(request))
    if not request.init_images or not isinstance(request.init_images[0], str) or not request.init_images[0]:
        raise ValidationError.for_field("init_images", "must hold at least one base64 image", request.init_images)
    native["init_image"] = request.init_images[0]
    if request.denoising_strength is not None:
        native["strength"] = request.denoising_strength
    kind, path = JobKind.IMG2IMG, IMG2IMG_PATHS[0]
    schema: type[NativeImg2Img] = NativeImg2Img
    if request.mask:
        native["mask_image"] = (
            await run_in_threadpool(_inverted, services, request.mask)
            if request.inpainting_mask_invert
            else request.mask
        )
        kind, schema, path = JobKind.INPAINT, NativeInpaint, INPAINT_PATHS[0]
    spec = await _prepared(kind, schema, path, services, caller, native)
    job = await run_to_end(services, spec)
    images = await read_outputs(services, job)
    return await run_in_threadpool(_images_reply, request, params.values, job, images)


async def _prepared(
    kind: JobKind, schema: type[NativeText2Img], path: str, services: Services, caller: ApiKey, native: dict[str, Any]
) -> JobSpec:
    try:
        spec, _ = await prepare_generation(kind, schema, path, services, caller, native)
    except SdError as exc:
        raise rename_fields(exc, NATIVE_NAMES) from None
    return spec


def _inverted(services: Services, mask: str) -> str:
    data = decode_base64_payload(mask, field="mask", max_bytes=services.image_limits.max_bytes)
    image = inspect_image(data, services.image_limits, field="mask").to_pil().convert("L")
    return png_data_url(image.point(lambda value: 255 - value))


async def extra_single_image(services: ServicesDep, caller: CallerDep, params: ParamsDep) -> dict[str, Any]:
    """Upscale with Real-ESRGAN: `upscaling_resize` is the scale; `upscaler_1` names one of ours, or the default."""
    request = validate_request(ExtraSingleImageRequest, params.values)
    if not request.image:
        raise ValidationError.for_field("image", "is required (base64)", None)
    if request.resize_mode not in (None, 0):
        raise ValidationError.for_field("resize_mode", "must be 0 (scale by upscaling_resize)", request.resize_mode)
    upscaler = request.upscaler_1
    model_id = upscaler if upscaler and services.models.upscaler_exists(upscaler) else DEFAULT_UPSCALER
    face = any(value and value > 0 for value in (request.gfpgan_visibility, request.codeformer_visibility))
    native = {
        "init_image": request.image,
        "scale": DEFAULT_UPSCALE if request.upscaling_resize is None else request.upscaling_resize,
        "model_id": model_id,
        "face_enhance": "yes" if face else "no",
    }
    try:
        spec, _ = await prepare_super_resolution(SUPER_RESOLUTION_LIST_PATHS[0], services, caller, native)
    except SdError as exc:
        raise rename_fields(exc, {"scale": "upscaling_resize", "init_image": "image"}) from None
    job = await run_to_end(services, spec)
    images = await read_outputs(services, job)
    return {"html_info": "", "image": base64.b64encode(images[0]).decode() if images else ""}


async def progress(request: Request, services: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    """The caller's own queued and running jobs: the first running one's progress (no live preview image, so
    `current_image` is always null; `skip_current_image` is accepted)."""
    active = await run_in_threadpool(services.jobs.active_jobs, caller.id)
    running = [job for job in active if job.status is JobStatus.RUNNING]
    current = running[0] if running else (active[0] if active else None)
    eta = 0.0
    if current is not None:
        eta = float((await run_in_threadpool(services.jobs.estimate, current)).eta_s)
    return {
        "progress": round(current.progress_percent / 100.0, 4) if current else 0.0,
        "eta_relative": eta,
        "state": {
            "skipped": False,
            "interrupted": bool(current and current.cancel_requested),
            "job": f"job({current.id})" if current else "",
            "job_count": len(active),
            "job_timestamp": current.created_at.strftime("%Y%m%d%H%M%S") if current else "0",
            "job_no": 0,
            "sampling_step": current.progress_step if current else 0,
            "sampling_steps": current.progress_total or current.steps if current else 0,
        },
        "current_image": None,
        "textinfo": f"{len(active)} job(s) queued or running" if active else None,
    }


async def interrupt(services: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    """Cancel every queued or running job of the caller's key; other keys' jobs are never touched."""
    active = await run_in_threadpool(services.jobs.active_jobs, caller.id)
    for job in active:
        await run_in_threadpool(services.jobs.cancel, job.id, owner_key_id=caller.id)
    return {"interrupted": [job.id for job in active]}


async def sd_models(services: ServicesDep, caller: CallerDep) -> list[dict[str, Any]]:
    ids = await run_in_threadpool(_ready_ids, services, ModelKind.CHECKPOINT)
    return [
        {"title": model, "model_name": model, "hash": None, "sha256": None, "filename": model, "config": None}
        for model in ids
    ]


async def samplers(caller: CallerDep) -> list[dict[str, Any]]:
    return [
        {"name": name, "aliases": [cls], "options": {"scheduler": "karras"} if karras else {}}
        for name, (cls, karras, _) in A1111_ALIASES.items()
    ]


async def upscalers(services: ServicesDep, caller: CallerDep) -> list[dict[str, Any]]:
    return [
        {"name": model_id, "model_name": model_id, "model_path": None, "model_url": None, "scale": None}
        for model_id in UPSCALER_MODELS
        if services.models.upscaler_exists(model_id)
    ]


def _ready_ids(services: Services, kind: ModelKind) -> list[str]:
    return [
        entry.model_id
        for entry in services.models.all_models()
        if entry.kind is kind and entry.state is ModelState.READY
    ]


async def loras(services: ServicesDep, caller: CallerDep) -> list[dict[str, Any]]:
    """The LoRAs loaded here; a prompt uses one as `<lora:id:weight>`."""
    ids = await run_in_threadpool(_ready_ids, services, ModelKind.LORA)
    return [{"name": lora, "alias": lora, "path": lora, "metadata": {}} for lora in ids]


async def sd_vae(services: ServicesDep, caller: CallerDep) -> list[dict[str, Any]]:
    ids = await run_in_threadpool(_ready_ids, services, ModelKind.VAE)
    return [{"model_name": vae, "filename": vae} for vae in ids]


async def embeddings(services: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    ids = await run_in_threadpool(_ready_ids, services, ModelKind.EMBEDDINGS)
    loaded = {
        name: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None, "vectors": None}
        for name in ids
    }
    return {"loaded": loaded, "skipped": {}}


def _default_model(services: Services) -> str | None:
    return services.settings.default_model_id or services.control.load_default_model()


async def get_options(services: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    return {
        "sd_model_checkpoint": await run_in_threadpool(_default_model, services),
        "sd_checkpoint_hash": None,
        "sd_vae": "Automatic",
        "CLIP_stop_at_last_layers": 1,
        "samples_format": "png",
    }


async def set_options(services: ServicesDep, caller: CallerDep, params: ParamsDep) -> None:
    """`sd_model_checkpoint` switches the server's default model (every key's default), so it needs an admin key;
    a request picks its own model with `override_settings`. Other options are accepted and ignored."""
    checkpoint = params.values.get("sd_model_checkpoint")
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, str) or not checkpoint.strip():
        raise ValidationError.for_field("sd_model_checkpoint", "must be a model id", checkpoint)
    if not caller.is_admin:
        raise ForbiddenError(
            "sd_model_checkpoint: switching the default model needs an admin key; "
            "pick a model per request with override_settings.sd_model_checkpoint"
        )
    model_id = checkpoint_id(checkpoint)
    if not services.models.exists(model_id):
        raise ModelNotFoundError.for_id(model_id, field="sd_model_checkpoint")
    fixed = services.settings.default_model_id
    if fixed == model_id:
        return None
    if fixed:
        raise ValidationError.for_field(
            "sd_model_checkpoint", "cannot change: SDSERVER_DEFAULT_MODEL_ID fixes the default model", model_id
        )
    await run_in_threadpool(services.control.save_default_model, model_id)
    return None


async def png_info(services: ServicesDep, caller: CallerDep, params: ParamsDep) -> dict[str, Any]:
    request = validate_request(PngInfoRequest, params.values)
    if not request.image:
        raise ValidationError.for_field("image", "is required (base64)", None)
    data = decode_base64_payload(request.image, field="image", max_bytes=services.image_limits.max_bytes)
    await run_in_threadpool(inspect_image, data, services.image_limits, field="image")
    items = await run_in_threadpool(png_text, data)
    text = items.pop(PARAMETERS_KEY, "")
    return {"info": text, "items": items, "parameters": parse_parameters(text) if text else {}}


async def scripts(caller: CallerDep) -> dict[str, list[str]]:
    """No A1111 scripts or extensions here (clients probe this at start)."""
    return {"txt2img": [], "img2img": []}


def _reply(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": model}}


_IMAGES: dict[int | str, dict[str, Any]] = {200: {"model": ImagesReply}}
router.add_api_route("/txt2img", txt2img, methods=["POST"], summary="A1111: text to image", responses=_IMAGES)
router.add_api_route(
    "/img2img", img2img, methods=["POST"], summary="A1111: image to image, inpainting", responses=_IMAGES
)
router.add_api_route(
    "/extra-single-image",
    extra_single_image,
    methods=["POST"],
    summary="A1111: upscale one image",
    responses=_reply(ExtraSingleImageReply),
)
router.add_api_route(
    "/progress",
    progress,
    methods=["GET"],
    summary="A1111: the caller's progress",
    responses=_reply(ProgressReply),
)
router.add_api_route(
    "/interrupt",
    interrupt,
    methods=["POST"],
    summary="A1111: cancel the caller's jobs",
    responses=_reply(InterruptReply),
)
router.add_api_route("/sd-models", sd_models, methods=["GET"], summary="A1111: generation models")
router.add_api_route("/samplers", samplers, methods=["GET"], summary="A1111: sampler names")
router.add_api_route("/upscalers", upscalers, methods=["GET"], summary="A1111: upscalers")
router.add_api_route("/options", get_options, methods=["GET"], summary="A1111: options", responses=_reply(OptionsReply))
router.add_api_route(
    "/options",
    set_options,
    methods=["POST"],
    summary="A1111: set options (model switch: admin)",
    responses={
        200: {"description": "null, as A1111 answers", "content": {"application/json": {"schema": {"type": "null"}}}}
    },
)
router.add_api_route(
    "/png-info",
    png_info,
    methods=["POST"],
    summary="A1111: read PNG parameters",
    responses=_reply(PngInfoReply),
)
router.add_api_route("/loras", loras, methods=["GET"], summary="A1111: LoRAs (use as <lora:id:weight>)")
router.add_api_route("/sd-vae", sd_vae, methods=["GET"], summary="A1111: VAEs")
router.add_api_route(
    "/embeddings",
    embeddings,
    methods=["GET"],
    summary="A1111: textual-inversion embeddings",
    responses=_reply(EmbeddingsReply),
)
router.add_api_route(
    "/scripts", scripts, methods=["GET"], summary="A1111: scripts (none)", responses=_reply(ScriptsReply)
)
