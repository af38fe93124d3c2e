"""OpenAI masks (transparent = edit) become native masks (white = repaint)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from sdserver.api.dialects.openai_masks import mask_from_openai, repaint_mask
from sdserver.errors import ValidationError
from sdserver.images import DecodedImage, ImageLimits, inspect_image

LIMITS = ImageLimits(max_bytes=1 << 20, max_pixels=1 << 20)


def decoded(image: Image.Image, field: str = "mask") -> DecodedImage:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return inspect_image(buffer.getvalue(), LIMITS, field=field)


def test_transparent_pixels_become_white_and_the_rest_black() -> None:
    mask = Image.new("RGBA", (8, 8), (10, 20, 30, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 4, 8))
    mask.putpixel((6, 6), (0, 0, 0, 128))  # half transparent: kept, as OpenAI edits only fully transparent pixels
    native = mask_from_openai(decoded(mask), decoded(Image.new("RGB", (8, 8)), "image"))
    assert native.mode == "L"
    assert native.getpixel((0, 0)) == 255 and native.getpixel((7, 7)) == 0 and native.getpixel((6, 6)) == 0


def test_an_opaque_image_has_no_mask_and_a_transparent_one_has_its_own() -> None:
    assert repaint_mask(Image.new("RGB", (4, 4))) is None
    assert repaint_mask(Image.new("RGBA", (4, 4), (1, 2, 3, 255))) is None
    own = repaint_mask(Image.new("RGBA", (4, 4), (1, 2, 3, 0)))
    assert own is not None and own.getextrema() == (255, 255)


@pytest.mark.parametrize(
    ("mask", "rule"),
    [
        (Image.new("RGB", (8, 8)), "alpha channel"),
        (Image.new("RGBA", (8, 4)), "the image's size 8x8"),
    ],
)
def test_a_mask_without_alpha_or_of_another_size_is_refused(mask: Image.Image, rule: str) -> None:
    with pytest.raises(ValidationError) as refused:
        mask_from_openai(decoded(mask), decoded(Image.new("RGB", (8, 8)), "image"))
    assert "mask" in refused.value.field_errors and rule in refused.value.message
