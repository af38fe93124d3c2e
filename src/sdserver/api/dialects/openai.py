"""The OpenAI Images API (`/v1/images/generations`, `edits`, `variations`) on the job spine, synchronous by
contract: the request waits for its job (SDSERVER_DIALECT_WAIT_S at most)."""

from __future__ import annotations

import base64
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from sdserver.api.aliases import IMG2IMG_PATHS, INPAINT_PATHS, TEXT2IMG_PATHS
from sdserver.api.deps import ParamsDep, ServicesDep
from sdserver.api.dialect_errors import rename_fields
from sdserver.api.dialects.keys import dialect_caller
from sdserver.api.dialects.openai_masks import mask_from_openai, png_data_url, repaint_mask
from sdserver.api.dialects.openai_schemas import (
    OpenAIImageRequest,
    OpenAIImagesResponse,
    OpenAIModelList,
    is_openai_model_name,
    native_fields,
    wants_base64,
)
from sdserver.api.dialects.sync_jobs import read_outputs, run_to_end
from sdserver.api.fields import validate_request
from sdserver.api.routes.generation import prepare_generation
from sdserver.api.schemas_generation import Img2ImgRequest, InpaintRequest, Text2ImgRequest
from sdserver.api.services import Services
from sdserver.auth import ApiKey
from sdserver.catalog.registry import ModelKind, ModelState
from sdserver.errors import JobErrorCode, JobFailedError, MissingFileError, ModelNotFoundError, SdError, ValidationError
from sdserver.images import DecodedImage, inspect_image
from sdserver.jobs import Job, JobKind, JobStatus

router = APIRouter(tags=["OpenAI Images API"])
CallerDep = Annotated[ApiKey, Depends(dialect_caller)]
# A variation with no prompt (OpenAI's variations take none) is drawn with this one.
VARIATION_PROMPT = "a variation of this image, high quality, detailed"
# Native field names in errors -> the OpenAI names the client sent (size covers width and height).
NATIVE_NAMES = {"init_image": "image", "mask_image": "mask", "samples": "n", "width": "size", "height": "size"}
_REPLY: dict[int | str, dict[str, Any]] = {
    200: {"model": OpenAIImagesResponse, "description": "The images, as URLs or base64 PNG."}
}


def _model_id(services: Services, model: str | None) -> str | None:
    """Our model for OpenAI's `model`: OpenAI's names (and none) mean the default; any other must exist here."""
    if model is None or is_openai_model_name(model):
        return None
    if not services.models.exists(model):
        raise ModelNotFoundError.for_id(model, field="model")
    return model


async def _read_image(services: Services, file: UploadFile | None, field: str) -> DecodedImage:
    if file is None:
        raise MissingFileError(f"No file was sent in the '{field}' form field")
    limit = services.image_limits.max_bytes
    data = await file.read(limit + 1)
    return await run_in_threadpool(inspect_image, data, services.image_limits, field=field)


def _file(params: ParamsDep, name: str) -> UploadFile | None:
    # The SDK sends a list of images as `image[]`.
    return params.files.get(name) or params.files.get(f"{name}[]")


async def _answer(
    services: Services, request: OpenAIImageRequest, kind: JobKind, caller: ApiKey, values: dict[str, Any]
) -> dict[str, Any]:
    routes: dict[JobKind, tuple[type[Text2ImgRequest], str]] = {
        JobKind.TEXT2IMG: (Text2ImgRequest, TEXT2IMG_PATHS[0]),
        JobKind.IMG2IMG: (Img2ImgRequest, IMG2IMG_PATHS[0]),
        JobKind.INPAINT: (InpaintRequest, INPAINT_PATHS[0]),
    }
    schema, path = routes[kind]
    values["model_id"] = _model_id(services, request.model)
    try:
        spec, resolved = await prepare_generation(kind, schema, path, services, caller, values)
    except SdError as exc:
        raise rename_fields(exc, NATIVE_NAMES) from None
    job = await run_to_end(services, spec)
    if job.status is JobStatus.CANCELLED:
        raise JobFailedError(f"job {job.id} was cancelled", job_code=JobErrorCode.CANCELLED)
    return await _reply(services, job, request, resolved.params.prompt, (resolved.width, resolved.height))


async def _reply(
    services: Services, job: Job, request: OpenAIImageRequest, prompt: str, size: tuple[int, int]
) -> dict[str, Any]:
    if wants_base64(request):
        data = [
            {"b64_json": base64.b64encode(image).decode(), "revised_prompt": prompt}
            for image in await read_outputs(services, job)
        ]
    else:
        data = [{"url": url, "revised_prompt": prompt} for url in job.future_links]
    return {
        "created": int(time.time()),
        "data": data,
        "size": f"{size[0]}x{size[1]}",
        "quality": request.quality or "auto",
        "output_format": "png",
    }


async def generations(services: ServicesDep, caller: CallerDep, params: ParamsDep) -> dict[str, Any]:
    request = validate_request(OpenAIImageRequest, params.values)
    if request.prompt is None:
        raise ValidationError.for_field("prompt", "is required", None)
    values = native_fields(request, params.values) | {"prompt": request.prompt}
    return await _answer(services, request, JobKind.TEXT2IMG, caller, values)


async def edits(services: ServicesDep, caller: CallerDep, params: ParamsDep) -> dict[str, Any]:
    """Image + mask: inpaint where the mask is transparent. No mask: the image's own transparency is the mask;
    an opaque image is redrawn whole (img2img)."""
    request = validate_request(OpenAIImageRequest, params.values)
    if request.prompt is None:
        raise ValidationError.for_field("prompt", "is required", None)
    image = await _read_image(services, _file(params, "image"), "image")
    mask_file = _file(params, "mask")
    pil = await run_in_threadpool(image.to_pil)
    mask: Image.Image | None
    if mask_file is not None:
        mask = await run_in_threadpool(mask_from_openai, await _read_image(services, mask_file, "mask"), image)
    else:
        mask = await run_in_threadpool(repaint_mask, pil)
    values = native_fields(request, params.values) | {"prompt": request.prompt}
    values = _with_image_size(values, image) | {"init_image": png_data_url(pil.convert("RGB"))}
    if mask is None:
        return await _answer(services, request, JobKind.IMG2IMG, caller, values)
    values["mask_image"] = png_data_url(mask)
    return await _answer(services, request, JobKind.INPAINT, caller, values)


async def variations(services: ServicesDep, caller: CallerDep, params: ParamsDep) -> dict[str, Any]:
    """img2img of the image; `prompt` (an extra field) steers it, else a neutral one."""
    request = validate_request(OpenAIImageRequest, params.values)
    image = await _read_image(services, _file(params, "image"), "image")
    pil = await run_in_threadpool(image.to_pil)
    values = native_fields(request, params.values) | {"prompt": request.prompt or VARIATION_PROMPT}
    values = _with_image_size(values, image) | {"init_image": png_data_url(pil.convert("RGB"))}
    return await _answer(services, request, JobKind.IMG2IMG, caller, values)


def _with_image_size(values: dict[str, Any], image: DecodedImage) -> dict[str, Any]:
    """Without a size, edits and variations keep the input's size (the family's rounding applies)."""
    if "width" in values:
        return values
    return values | {"width": image.width, "height": image.height}


async def list_models(services: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    """OpenAI's model list: the generation models ready here (their ids are what `model` takes)."""
    entries = await run_in_threadpool(services.models.all_models)
    return {
        "object": "list",
        "data": [
            {
                "id": entry.model_id,
                "object": "model",
                "created": int(entry.loaded_at.timestamp()) if entry.loaded_at else 0,
                "owned_by": "sdserver",
            }
            for entry in entries
            if entry.kind is ModelKind.CHECKPOINT and entry.state is ModelState.READY
        ],
    }


router.add_api_route(
    "/v1/models",
    list_models,
    methods=["GET"],
    summary="OpenAI: the models this server runs",
    responses={200: {"model": OpenAIModelList}},
)
for _path, _endpoint, _summary in (
    ("/v1/images/generations", generations, "OpenAI: create images from a prompt"),
    ("/v1/images/edits", edits, "OpenAI: edit an image (transparent mask pixels are repainted)"),
    ("/v1/images/variations", variations, "OpenAI: variations of an image"),
):
    router.add_api_route(_path, _endpoint, methods=["POST"], summary=_summary, responses=_REPLY)
