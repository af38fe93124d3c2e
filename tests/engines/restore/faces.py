"""Test images for face_enhance: a real face (scikit-image's astronaut photo) on a plain canvas at a known box."""

from __future__ import annotations

from typing import Final

import numpy as np
import skimage.data
from PIL import Image

# Where the Haar detector finds the astronaut's face in skimage.data.astronaut() (x, y, width, height).
ASTRONAUT_FACE: Final = (177, 67, 93, 93)
# The patch of the photo pasted onto the canvas: the face with a margin, so the cascade sees its outline.
PATCH: Final = (137, 27, 173, 173)
CANVAS_SIZE: Final = (320, 240)
CANVAS_GREY: Final = 90


def face_on_canvas(
    left: int = 120, top: int = 40, size: tuple[int, int] = CANVAS_SIZE
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A plain grey canvas with the astronaut's face patch at (`left`, `top`); returns it and the face box."""
    x, y, w, h = PATCH
    patch = skimage.data.astronaut()[y : y + h, x : x + w]
    width, height = size
    canvas = np.full((height, width, 3), CANVAS_GREY, dtype=np.uint8)
    canvas[top : top + h, left : left + w] = patch
    fx, fy, fw, fh = ASTRONAUT_FACE
    return Image.fromarray(canvas), (fx - x + left, fy - y + top, fw, fh)


def no_face_image(width: int = 240, height: int = 160) -> Image.Image:
    """A real photo without a face (a cup of coffee), cut small."""
    return Image.fromarray(skimage.data.coffee()[100 : 100 + height, 150 : 150 + width])
