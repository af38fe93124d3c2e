"""OpenAI's edit masks (transparent pixels are the area to edit) as native masks (white is repainted)."""

from __future__ import annotations

import base64

from PIL import Image

from sdserver.errors import ValidationError
from sdserver.images import DecodedImage, encode_image

OPAQUE = 255


def has_transparency(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def repaint_mask(image: Image.Image) -> Image.Image | None:
    """White where `image` is fully transparent, black elsewhere; None when no pixel is transparent."""
    if not has_transparency(image):
        return None
    alpha = image.convert("RGBA").getchannel("A")
    if alpha.getextrema()[0] == OPAQUE:
        return None
    return alpha.point(lambda value: 255 if value == 0 else 0, mode="L")


def mask_from_openai(mask: DecodedImage, image: DecodedImage) -> Image.Image:
    """The native mask of an OpenAI `mask`: it must have an alpha channel and the image's size."""
    if (mask.width, mask.height) != (image.width, image.height):
        rule = f"must have the image's size {image.width}x{image.height}"
        raise ValidationError.for_field("mask", rule, f"{mask.width}x{mask.height}")
    pil = mask.to_pil()
    if not has_transparency(pil):
        raise ValidationError.for_field(
            "mask", "must be a PNG with an alpha channel (transparent pixels mark the area to edit)", pil.mode
        )
    converted = repaint_mask(pil)
    # A mask without a transparent pixel edits nothing: all black.
    return converted if converted is not None else Image.new("L", pil.size, 0)


def png_data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_image(image, "png")).decode()
