"""Outpaint and mask geometry for the image-editing endpoints: where the image sits on the extended canvas, the
canvas with its new area filled from the image's edges, the mask of what is painted, and the box kept exactly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from PIL import Image

from sdserver.errors import ValidationError

# Where the original sits on the new canvas: "left" keeps it at the left edge, so the canvas grows to the right.
ALIGNMENTS: Final = ("middle", "left", "right", "top", "bottom")
ALIGNMENT_ALIASES: Final = {"center": "middle", "centre": "middle"}


@dataclass(frozen=True)
class Canvas:
    """An outpainting job's inputs: `image` (the canvas), `mask` (white: painted) and `keep` (left, top, right,
    bottom: the original pixels put back exactly after the run)."""

    image: Image.Image
    mask: Image.Image
    keep: tuple[int, int, int, int]


def parse_alignment(value: str | None) -> str:
    """`alignment` as one of ALIGNMENTS (default middle); anything else is a field error."""
    if value is None:
        return ALIGNMENTS[0]
    name = value.strip().lower()
    name = ALIGNMENT_ALIASES.get(name, name)
    if name not in ALIGNMENTS:
        raise ValidationError.for_field("alignment", f"must be one of {', '.join(ALIGNMENTS)}", value)
    return name


def fit_inside(size: tuple[int, int], bounds: tuple[int, int]) -> tuple[int, int]:
    """`size` scaled down (aspect kept) until it fits in `bounds`; unchanged when it already fits."""
    width, height = size
    scale = min(1.0, bounds[0] / width, bounds[1] / height)
    return max(1, int(width * scale)), max(1, int(height * scale))


def fit_to_blocks(size: tuple[int, int], max_side: int, multiple: int, min_side: int) -> tuple[int, int]:
    """An input image's job size: scaled down to `max_side`, then each side rounded down to `multiple` (at least
    `min_side`)."""
    width, height = fit_inside(size, (max_side, max_side))
    return max(min_side, width - width % multiple), max(min_side, height - height % multiple)


def canvas_side(image_side: int, multiple: int, min_side: int, max_side: int) -> int:
    """A canvas side the request left out: the image's own side, rounded up to `multiple` so the image fits
    unscaled, within `min_side` and `max_side`."""
    side = -(-image_side // multiple) * multiple
    return max(min_side, min(side, max_side - max_side % multiple))


def outpaint_canvas(image: Image.Image, size: tuple[int, int], alignment: str, overlap: int) -> Canvas:
    """The canvas of `size` with `image` placed by `alignment` (scaled down first if it does not fit), the new area
    filled by repeating the image's edge pixels, a mask that paints the new area plus `overlap` pixels (at most a
    quarter of the image's side) into the image along each new edge, and the rest of the image kept exactly."""
    canvas_w, canvas_h = size
    fitted = fit_inside(image.size, size)
    if fitted == size:
        rule = f"must make the canvas larger than the image ({fitted[0]}x{fitted[1]}) in at least one direction"
        raise ValidationError.for_field("width", rule, f"{canvas_w}x{canvas_h}")
    source = image.convert("RGB")
    if fitted != source.size:
        source = source.resize(fitted, Image.Resampling.LANCZOS)
    width, height = fitted
    left, top = _position(alignment, size, fitted)
    filled = _edge_filled(source, size, (left, top))
    # The overlap applies only on sides where the canvas grew (an image edge on the canvas edge stays kept), and
    # takes at most a quarter of the image's side there: at least half of the image is always kept.
    across, down = min(overlap, width // 4), min(overlap, height // 4)
    keep = (
        left + (across if left > 0 else 0),
        top + (down if top > 0 else 0),
        left + width - (across if left + width < canvas_w else 0),
        top + height - (down if top + height < canvas_h else 0),
    )
    mask = Image.new("L", size, 255)
    mask.paste(0, keep)
    return Canvas(filled, mask, keep)


def _edge_filled(image: Image.Image, size: tuple[int, int], at: tuple[int, int]) -> Image.Image:
    """`image` at `at` on a canvas of `size`, every pixel outside it a copy of the nearest edge pixel."""
    (canvas_w, canvas_h), (left, top), (width, height) = size, at, image.size
    nearest = Image.Resampling.NEAREST
    row = Image.new("RGB", (canvas_w, height))
    row.paste(image.crop((0, 0, 1, height)).resize((max(1, left), height), nearest), (0, 0))
    right = canvas_w - left - width
    row.paste(image.crop((width - 1, 0, width, height)).resize((max(1, right), height), nearest), (left + width, 0))
    row.paste(image, (left, 0))
    canvas = Image.new("RGB", size)
    canvas.paste(row.crop((0, 0, canvas_w, 1)).resize((canvas_w, max(1, top)), nearest), (0, 0))
    bottom = canvas_h - top - height
    canvas.paste(
        row.crop((0, height - 1, canvas_w, height)).resize((canvas_w, max(1, bottom)), nearest), (0, top + height)
    )
    canvas.paste(row, (0, top))
    return canvas


def _position(alignment: str, canvas: tuple[int, int], image: tuple[int, int]) -> tuple[int, int]:
    spare_w, spare_h = canvas[0] - image[0], canvas[1] - image[1]
    left = {"left": 0, "right": spare_w}.get(alignment, spare_w // 2)
    top = {"top": 0, "bottom": spare_h}.get(alignment, spare_h // 2)
    return left, top
