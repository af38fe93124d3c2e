"""Decodes a client's image field under every limit and guard, and stores it with its owner."""

from __future__ import annotations

import dataclasses

from starlette.concurrency import run_in_threadpool

from sdserver.api.services import Services
from sdserver.api.uploads import SavedUpload
from sdserver.auth import ApiKey
from sdserver.images import DecodedImage, center_crop_square, encode_image, load_image_input

CROP_SIZE = 512


async def store_client_image(
    services: Services,
    value: str,
    *,
    field: str,
    owner: ApiKey,
    endpoint: str,
    temp: bool,
    crop: bool = False,
    max_pixels: int | None = None,
) -> tuple[SavedUpload, DecodedImage]:
    """Decode (SSRF-guarded, capped; `max_pixels` may only tighten the cap), optionally centre-crop, store."""
    limits = services.image_limits
    if max_pixels is not None:
        limits = dataclasses.replace(limits, max_pixels=min(limits.max_pixels, max_pixels))
    image = await load_image_input(
        value, field=field, limits=limits, policy=services.fetch_policy, issued=services.objects
    )
    if crop:
        image = await run_in_threadpool(_crop_to_square, image)
    saved = await run_in_threadpool(
        services.uploads.save, services.objects, image, owner=owner, endpoint=endpoint, temp=temp
    )
    return saved, image


def _crop_to_square(image: DecodedImage) -> DecodedImage:
    square = center_crop_square(image.to_pil(), CROP_SIZE)
    return DecodedImage(data=encode_image(square, "png"), format="png", width=CROP_SIZE, height=CROP_SIZE)
