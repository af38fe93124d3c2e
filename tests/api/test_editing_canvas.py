"""Outpaint geometry: where the picture sits, the edge-filled canvas, the mask, the kept box, and the field errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdserver.api.editing_canvas import canvas_side, fit_to_blocks, outpaint_canvas, parse_alignment
from sdserver.errors import ValidationError


def gradient(width: int, height: int) -> Image.Image:
    x = np.tile(np.arange(width, dtype=np.uint8) * 3, (height, 1))
    y = np.tile((np.arange(height, dtype=np.uint8) * 5)[:, None], (1, width))
    return Image.fromarray(np.stack([x, y, np.full_like(x, 77)], -1), "RGB")


@pytest.mark.parametrize(
    ("alignment", "at"),
    [("middle", (20, 8)), ("left", (0, 8)), ("right", (40, 8)), ("top", (20, 0)), ("bottom", (20, 16))],
)
def test_the_picture_sits_where_alignment_says_and_the_rest_repeats_its_edges(
    alignment: str, at: tuple[int, int]
) -> None:
    picture = gradient(40, 48)
    canvas = outpaint_canvas(picture, (80, 64), alignment, 0)
    left, top = at
    pixels, source = np.asarray(canvas.image), np.asarray(picture)
    assert canvas.image.size == (80, 64) and canvas.keep == (left, top, left + 40, top + 48)
    assert np.array_equal(pixels[top : top + 48, left : left + 40], source)
    if left:
        assert np.array_equal(pixels[top : top + 48, 0], source[:, 0])
    if left + 40 < 80:
        assert np.array_equal(pixels[top : top + 48, -1], source[:, -1])
    if top:
        assert np.array_equal(pixels[0, left : left + 40], source[0])
    mask = np.asarray(canvas.mask)
    assert (mask[top : top + 48, left : left + 40] == 0).all() and mask.sum() == 255 * (80 * 64 - 40 * 48)


def test_overlap_is_taken_on_new_edges_only_and_capped_at_a_quarter() -> None:
    canvas = outpaint_canvas(gradient(40, 64), (80, 64), "left", 16)
    # Grown to the right only: the overlap (capped at 40 // 4) comes off the right edge.
    assert canvas.keep == (0, 0, 30, 64)
    assert (np.asarray(canvas.mask)[:, 30:] == 255).all()


def test_a_picture_larger_than_the_canvas_is_scaled_down_to_fit() -> None:
    canvas = outpaint_canvas(gradient(200, 100), (128, 96), "top", 0)
    assert canvas.keep == (0, 0, 128, 64)


def test_a_canvas_no_larger_than_the_picture_is_refused() -> None:
    with pytest.raises(ValidationError) as error:
        outpaint_canvas(gradient(64, 64), (64, 64), "middle", 0)
    assert error.value.message == (
        "width: must make the canvas larger than the image (64x64) in at least one direction, got '64x64'"
    )


def test_alignment_names() -> None:
    assert (parse_alignment(None), parse_alignment(" Center "), parse_alignment("LEFT")) == ("middle", "middle", "left")
    with pytest.raises(ValidationError) as error:
        parse_alignment("up")
    assert error.value.field_errors == {"alignment": ["must be one of middle, left, right, top, bottom, got 'up'"]}


def test_sizes() -> None:
    assert fit_to_blocks((1500, 750), 1024, 8, 64) == (1024, 512)
    assert fit_to_blocks((100, 30), 1024, 8, 64) == (96, 64)
    assert (canvas_side(500, 8, 64, 1024), canvas_side(20, 8, 64, 1024), canvas_side(3000, 8, 64, 1020)) == (
        504,
        64,
        1016,
    )
