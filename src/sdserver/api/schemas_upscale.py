"""Request schema of super resolution and the rules that turn it into a validated request."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from sdserver.api.fields import Flag, LenientFloat, OptionalText
from sdserver.api.schemas_generation import JobRequest, check_webhook
from sdserver.catalog.ids import resolve_upscaler_id
from sdserver.errors import ValidationError
from sdserver.job_params import DEFAULT_UPSCALE_SCALE

MIN_SCALE = 1.0
MAX_SCALE = 4.0


class SuperResolutionRequest(JobRequest):
    url: OptionalText = Field(default=None, description="The image: http(s) URL, data URL or raw base64.")
    init_image: OptionalText = Field(default=None, description="Alias of `url` (sent by v6 clients and the SDK).")
    scale: LenientFloat = Field(default=None, description="Upscale factor, 1–4 (default 4).")
    model_id: OptionalText = Field(default=None, description="Upscaler; default realesr-general-x4v3.")
    face_enhance: Flag = Field(default=None, description="Restore faces with GFPGAN/CodeFormer.")


@dataclass(frozen=True)
class ResolvedSuperResolution:
    image: str
    image_field: str
    scale: float
    model_id: str
    face_enhance: bool
    webhook: str | None
    track_id: str | int | None
    instant_response: bool
    base64: bool
    temp: bool


def resolve_super_resolution(request: SuperResolutionRequest) -> ResolvedSuperResolution:
    image, field = (request.url, "url") if request.url else (request.init_image, "init_image")
    if not image:
        raise ValidationError.for_field("url", "is required (or init_image)", None)
    scale = DEFAULT_UPSCALE_SCALE if request.scale is None else request.scale
    if not MIN_SCALE <= scale <= MAX_SCALE:
        raise ValidationError.for_field("scale", f"must be between {MIN_SCALE:g} and {MAX_SCALE:g}", request.scale)
    return ResolvedSuperResolution(
        image=image,
        image_field=field,
        scale=scale,
        model_id=resolve_upscaler_id(request.model_id),
        face_enhance=bool(request.face_enhance),
        webhook=check_webhook(request.webhook),
        track_id=request.track_id,
        instant_response=bool(request.instant_response),
        base64=bool(request.base64),
        temp=bool(request.temp),
    )
