"""ControlNet hint preprocessors (`auto_hint`): make the hint image for each type the catalog names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from PIL import Image

from sdserver.catalog.hints import HINT_TYPES


def canny_hint(image: Image.Image) -> Image.Image:
    """White Canny edges on black (RGB)."""
    from sdserver.engines.diffusion.canny import canny_edges

    return canny_edges(image)


def passthrough_hint(image: Image.Image) -> Image.Image:
    """Types whose ControlNet reads the picture itself (tile, ip2p): the image unchanged, in RGB."""
    return image.convert("RGB")


HINT_PREPROCESSORS: Final[dict[str, Callable[[Image.Image], Image.Image]]] = {
    "canny": canny_hint,
    "ip2p": passthrough_hint,
    "tile": passthrough_hint,
}
assert frozenset(HINT_PREPROCESSORS) == HINT_TYPES, "the catalog's hint names and the preprocessors must match"


def make_hint(image: Image.Image, controlnet_type: str) -> Image.Image:
    """The hint for this type; KeyError for a type without a preprocessor (the API refuses those up front)."""
    return HINT_PREPROCESSORS[controlnet_type](image)
