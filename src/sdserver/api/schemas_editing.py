"""Request schemas of the image-editing endpoints (outpaint, object_removal, inpaint): the generation fields of
text2img, an image (`init_image`, alias `image`), and each endpoint's own fields."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from pydantic import AliasChoices, Field

from sdserver.api.fields import LenientFloat, LenientInt, OptionalText, RequiredText
from sdserver.api.schemas_generation import Text2ImgRequest
from sdserver.errors import ValidationError

# Object removal paints the masked area as background; the prompts steer it there (a request may override them).
OBJECT_REMOVAL_PROMPT: Final = "empty background, seamless continuation of the surroundings"
OBJECT_REMOVAL_NEGATIVE: Final = "object, person, animal, text, watermark, logo"
# Outpaint without a prompt continues the picture.
OUTPAINT_PROMPT: Final = "seamless continuation of the picture, high quality"
# Edits start from noise in the painted area by default (the masked pixels are replaced, not varied).
DEFAULT_EDIT_STRENGTH: Final = 1.0
MAX_OVERLAP: Final = 256


class EditMode(StrEnum):
    OUTPAINT = "outpaint"
    OBJECT_REMOVAL = "object_removal"
    INPAINT = "inpaint"


class EditingRequest(Text2ImgRequest):
    """The generation fields of text2img; `width` and `height` are the outpaint canvas (the other edits keep the
    image's own size, scaled down to the model family's cap)."""

    # Optional here (each endpoint has a default, set before the generation rules read it).
    prompt: OptionalText = Field(  # type: ignore[assignment]
        default=None, description="What to paint (each endpoint has a default)."
    )
    init_image: RequiredText = Field(
        validation_alias=AliasChoices("init_image", "image"),
        description="The image: URL, data URL, base64, or a URL this server issued (alias image).",
    )
    strength: LenientFloat = Field(
        default=None,
        validation_alias=AliasChoices("strength", "prompt_strength"),
        description="How much of the painted area is redrawn, 0–1 (default 1: from noise).",
    )


class OutpaintRequest(EditingRequest):
    overlap_width: LenientInt = Field(
        default=None,
        description="Pixels of the image along each new edge that are repainted for a softer seam (default 0; the "
        "rest of the image is kept exactly).",
    )
    alignment: OptionalText = Field(
        default=None,
        description="Where the image sits on the canvas: middle (default), left, right, top, bottom.",
    )


class ObjectRemovalRequest(EditingRequest):
    mask_image: RequiredText = Field(description="Mask of the image's size: white is removed, black is kept.")


class EditInpaintRequest(ObjectRemovalRequest):
    prompt: RequiredText = Field(description="What to paint where the mask is white.")


def edit_strength(value: float | None) -> float:
    if value is None:
        return DEFAULT_EDIT_STRENGTH
    if not 0 < value <= 1:
        raise ValidationError.for_field("strength", "must be above 0 and at most 1", value)
    return value


def overlap_width(value: int | None) -> int:
    if value is None:
        return 0
    if not 0 <= value <= MAX_OVERLAP:
        raise ValidationError.for_field("overlap_width", f"must be between 0 and {MAX_OVERLAP}", value)
    return value
