"""Stablecog's multipart upload, `POST /v1/image/upload`, with Stablecog's own error bodies and codes."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from sdserver.api.deps import CallerDep, ParamsDep, ServicesDep
from sdserver.api.reply_docs.uploads import STABLECOG_UPLOAD_REPLIES
from sdserver.errors import ImageTooLargeError, MissingFileError
from sdserver.images import inspect_image

router = APIRouter(tags=["stablecog"])

_MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


@router.post(
    "/v1/image/upload",
    summary="Upload an image (Stablecog); the URL is accepted as init_image / init_image_url",
    openapi_extra=_MULTIPART_BODY,
    **STABLECOG_UPLOAD_REPLIES.route_options(),
)
async def stablecog_upload(services: ServicesDep, caller: CallerDep, params: ParamsDep) -> dict[str, str]:
    upload = params.files.get("file")
    if upload is None:
        raise MissingFileError("Send the image as the multipart form field 'file'")
    limit = services.image_limits.max_bytes
    # Read one byte past the limit: enough to know it is too large without reading all of it.
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ImageTooLargeError(f"the file is larger than the {limit} byte limit", field="file")
    image = await run_in_threadpool(inspect_image, data, services.image_limits, field="file")
    saved = await run_in_threadpool(
        services.uploads.save, services.objects, image, owner=caller, endpoint="stablecog_upload", temp=False
    )
    return {"object": saved.url}
