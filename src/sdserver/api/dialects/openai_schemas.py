"""Request and reply schemas of the OpenAI Images API dialect, and the rules that turn a request into native
generation fields."""

from __future__ import annotations

import re
from typing import Any, Final

from pydantic import BaseModel, Field

from sdserver.api.fields import LenientInt, OptionalText
from sdserver.api.schemas import LenientRequest
from sdserver.errors import ValidationError

MAX_IMAGES = 4
RESPONSE_FORMATS: Final = ("url", "b64_json")
QUALITIES: Final = ("auto", "standard", "hd", "low", "medium", "high")
# OpenAI's own model names: clients hard-code them, so they mean this server's default model.
OPENAI_MODEL_PREFIXES: Final = ("dall-e", "gpt-image")
# Native generation fields a client may add to an OpenAI body (the openai SDK sends them via `extra_body`).
NATIVE_FIELDS: Final = (
    "negative_prompt",
    "num_inference_steps",
    "steps",
    "guidance_scale",
    "seed",
    "scheduler",
    "use_karras_sigmas",
    "algorithm_type",
    "clip_skip",
    "strength",
    "lora_model",
    "lora_strength",
    "vae",
    "embeddings_model",
    "embeddings",
    "tomesd",
    "enhance_prompt",
    "safety_checker",
    "safety_checker_type",
    "refiner",
)
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")


class OpenAIImageRequest(LenientRequest):
    """The fields every OpenAI images endpoint shares (variations have no prompt)."""

    prompt: OptionalText = Field(default=None, description="What to draw.")
    model: OptionalText = Field(
        default=None, description="A model id on this server; dall-e-* and gpt-image-* mean the default model."
    )
    n: LenientInt = Field(default=None, description="Images to make, 1–4 (default 1).")
    size: OptionalText = Field(default=None, description="WIDTHxHEIGHT, or auto (the model's default size).")
    quality: OptionalText = Field(default=None, description="Accepted (auto, standard, hd, low, medium, high).")
    response_format: OptionalText = Field(
        default=None, description="url or b64_json; default url (b64_json for gpt-image-* models)."
    )
    style: OptionalText = Field(default=None, description="Accepted, no effect.")
    user: OptionalText = Field(default=None, description="Accepted, no effect.")
    guidance: OptionalText = Field(default=None, description="Alias of guidance_scale.")


class OpenAIImage(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class OpenAIImagesResponse(BaseModel):
    created: int
    data: list[OpenAIImage]
    size: str | None = None
    quality: str | None = None
    output_format: str | None = None


def parse_size(value: str | None) -> tuple[int, int] | None:
    """(width, height) of `WIDTHxHEIGHT`; None for auto or nothing."""
    if value is None or value.strip().lower() == "auto":
        return None
    match = _SIZE.match(value)
    if match is None:
        raise ValidationError.for_field("size", "must be WIDTHxHEIGHT (e.g. 1024x1024) or auto", value)
    return int(match.group(1)), int(match.group(2))


def check_choice(field: str, value: str | None, choices: tuple[str, ...]) -> str | None:
    if value is not None and value not in choices:
        raise ValidationError.for_field(field, f"must be one of {', '.join(choices)}", value)
    return value


def image_count(value: int | None) -> int:
    if value is None:
        return 1
    if not 1 <= value <= MAX_IMAGES:
        raise ValidationError.for_field("n", f"must be between 1 and {MAX_IMAGES}", value)
    return value


def is_openai_model_name(model: str) -> bool:
    return model.lower().startswith(OPENAI_MODEL_PREFIXES)


def wants_base64(request: OpenAIImageRequest) -> bool:
    """b64_json when asked for, and by default for gpt-image models (OpenAI answers those only in base64)."""
    if request.response_format is not None:
        return request.response_format == "b64_json"
    return request.model is not None and request.model.lower().startswith("gpt-image")


def native_fields(request: OpenAIImageRequest, values: dict[str, Any]) -> dict[str, Any]:
    """The native generation fields of an OpenAI request: its own fields translated, and the native extras."""
    check_choice("response_format", request.response_format, RESPONSE_FORMATS)
    check_choice("quality", request.quality, QUALITIES)
    native: dict[str, Any] = {name: values[name] for name in NATIVE_FIELDS if name in values}
    if request.guidance is not None and "guidance_scale" not in native:
        native["guidance_scale"] = request.guidance
    # OpenAI clients expect their prompt as written: the server's prompt enhancer is off unless asked for.
    native.setdefault("enhance_prompt", "no")
    native["samples"] = image_count(request.n)
    size = parse_size(request.size)
    if size is not None:
        native["width"], native["height"] = size
    return native


class OpenAIModel(BaseModel):
    id: str
    object: str
    created: int
    owned_by: str


class OpenAIModelList(BaseModel):
    object: str
    data: list[OpenAIModel]
