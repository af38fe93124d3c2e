"""The `nsfw_image_check` endpoint: store the client's image, score it with open_nsfw, answer the flag."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from sdserver import safety
from sdserver.api.aliases import NSFW_CHECK_PATHS, add_alias_routes
from sdserver.api.client_images import store_client_image
from sdserver.api.deps import CallerDep, ParamsDep, ServicesDep
from sdserver.api.fields import LenientFloat, RequiredText, validate_request
from sdserver.api.reply_docs.uploads import NSFW_CHECK_REPLIES
from sdserver.api.schemas import LenientRequest
from sdserver.errors import ValidationError
from sdserver.images import DecodedImage

router = APIRouter(tags=["safety"])


class NsfwImageCheckRequest(LenientRequest):
    init_image: RequiredText = Field(description="The image: http(s) URL, data URL, raw base64, or a URL we issued.")
    threshold: LenientFloat = Field(
        default=None,
        description="open_nsfw score (0–1) at or above which the image counts as NSFW; default: the server's.",
    )


def _score(image: DecodedImage) -> float:
    return safety.nsfw_scores([image.to_pil()])[0]


async def nsfw_image_check(services: ServicesDep, caller: CallerDep, params: ParamsDep) -> dict[str, Any]:
    request = validate_request(NsfwImageCheckRequest, params.values)
    threshold = services.settings.nsfw_threshold if request.threshold is None else request.threshold
    if not 0.0 <= threshold <= 1.0:
        raise ValidationError.for_field("threshold", "must be between 0 and 1", request.threshold)
    # Kept 24 hours only: the stored copy exists so the reply can point at exactly the image that was checked.
    saved, image = await store_client_image(
        services, request.init_image, field="init_image", owner=caller, endpoint="nsfw_image_check", temp=True
    )
    # Decoding and onnxruntime both block; the event loop keeps serving other requests meanwhile.
    score = await run_in_threadpool(_score, image)
    return {
        "status": "success",
        "images": saved.url,
        "has_nsfw_concept": [score >= threshold],
        "nsfw_score": [score],
    }


add_alias_routes(
    router,
    NSFW_CHECK_PATHS,
    nsfw_image_check,
    summary="Check an image with the open_nsfw classifier",
    body=NsfwImageCheckRequest,
    replies=NSFW_CHECK_REPLIES,
)
