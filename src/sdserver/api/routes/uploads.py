"""The ModelsLab upload endpoints: upload_image, base64_crop and the two base64_to_url helpers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from sdserver.api.client_images import store_client_image
from sdserver.api.deps import CallerDep, ParamsDep, ServicesDep
from sdserver.api.fields import validate_request
from sdserver.api.reply_docs.uploads import BASE64_CROP_REPLIES, BASE64_TO_URL_REPLIES, UPLOAD_IMAGE_REPLIES
from sdserver.api.schemas import (
    Base64CropRequest,
    Base64ToUrlRequest,
    ImageEditingBase64ToUrlRequest,
    UploadImageRequest,
    openapi_body,
)

router = APIRouter(tags=["uploads"])


@router.post(
    "/api/v1/enterprise/upload_image",
    summary="Upload an image to the object store",
    openapi_extra=openapi_body(UploadImageRequest),
    **UPLOAD_IMAGE_REPLIES.route_options(),
)
async def upload_image(services: ServicesDep, caller: CallerDep, params: ParamsDep) -> dict[str, Any]:
    request = validate_request(UploadImageRequest, params.values)
    saved, _ = await store_client_image(
        services,
        request.base64_image,
        field="base64_image",
        owner=caller,
        endpoint="upload_image",
        temp=bool(request.temp),
    )
    return {"status": "success", "message": "image uploaded", "image_url": saved.url, "id": saved.id}


@router.post(
    "/api/v3/base64_crop",
    summary="Upload an image, optionally centre-cropped to 512×512",
    openapi_extra=openapi_body(Base64CropRequest),
    **BASE64_CROP_REPLIES.route_options(),
)
async def base64_crop(services: ServicesDep, caller: CallerDep, params: ParamsDep) -> dict[str, Any]:
    request = validate_request(Base64CropRequest, params.values)
    saved, _ = await store_client_image(
        services,
        request.image,
        field="image",
        owner=caller,
        endpoint="base64_crop",
        temp=bool(request.temp),
        crop=bool(request.crop),
    )
    return {
        "status": "success",
        "messege": "image uploaded",
        "message": "image uploaded",
        "link": saved.url,
        "request_id": saved.id,
    }


@router.post(
    "/api/v6/base64_to_url",
    summary="Turn a base64 image into a URL",
    openapi_extra=openapi_body(Base64ToUrlRequest),
    **BASE64_TO_URL_REPLIES.route_options(),
)
async def base64_to_url(services: ServicesDep, caller: CallerDep, params: ParamsDep) -> dict[str, Any]:
    request = validate_request(Base64ToUrlRequest, params.values)
    saved, _ = await store_client_image(
        services,
        request.base64_string,
        field="base64_string",
        owner=caller,
        endpoint="base64_to_url",
        temp=bool(request.temp),
    )
    return {"status": "success", "id": saved.id, "output": [saved.url]}


@router.post(
    "/api/v6/image_editing/base64_to_url",
    summary="Turn a base64 image into a URL (image editing family)",
    openapi_extra=openapi_body(ImageEditingBase64ToUrlRequest),
    **BASE64_TO_URL_REPLIES.route_options(),
)
async def image_editing_base64_to_url(services: ServicesDep, caller: CallerDep, params: ParamsDep) -> dict[str, Any]:
    request = validate_request(ImageEditingBase64ToUrlRequest, params.values)
    saved, _ = await store_client_image(
        services,
        request.init_image,
        field="init_image",
        owner=caller,
        endpoint="image_editing_base64_to_url",
        temp=bool(request.temp),
    )
    return {"status": "success", "id": saved.id, "output": [saved.url]}
