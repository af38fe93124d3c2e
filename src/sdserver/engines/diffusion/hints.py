"""ControlNet hint preprocessors (`auto_hint`): which types have one, and making the hint; torch-free and light to
import, so the API validates `controlnet_type` (and the ControlNet count) against the same table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from PIL import Image

# ControlNets one job may combine (MultiControlNet); the engine keeps as many loaded.
MAX_CONTROLNETS: Final = 2


def canny_hint(image: Image.Image) -> Image.Image:
    """White Canny edges on black (RGB); numpy is imported only here, so the API (which reads this table) never
    loads it."""
    from sdserver.engines.diffusion.canny import canny_edges

    return canny_edges(image)


def passthrough_hint(image: Image.Image) -> Image.Image:
    """Types whose ControlNet reads the picture itself (tile, ip2p): the image unchanged, in RGB."""
    return image.convert("RGB")


# What `auto_hint` can make, by `controlnet_type`. Other types (depth, openpose, ...) need a ready `control_image`.
HINT_PREPROCESSORS: Final[dict[str, Callable[[Image.Image], Image.Image]]] = {
    "canny": canny_hint,
    "ip2p": passthrough_hint,
    "tile": passthrough_hint,
}


def make_hint(image: Image.Image, controlnet_type: str) -> Image.Image:
    """The hint for this type; KeyError for a type without a preprocessor (the API refuses those up front)."""
    return HINT_PREPROCESSORS[controlnet_type](image)
