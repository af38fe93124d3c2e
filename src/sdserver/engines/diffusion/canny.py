"""The Canny edge detector behind the `canny` hint: PIL and numpy, torch-free (imported only when a hint is made)."""

from __future__ import annotations

from typing import Any, Final

import numpy as np
from PIL import Image, ImageFilter

# OpenCV's Canny thresholds on the 0–255 Sobel magnitude, as A1111's ControlNet extension uses by default.
CANNY_LOW: Final = 100.0
CANNY_HIGH: Final = 200.0
# Smoothing before the gradients, like the 5×5 Gaussian the Canny paper and OpenCV users apply.
CANNY_BLUR_RADIUS: Final = 1.4

Array = np.ndarray[Any, np.dtype[Any]]


def canny_edges(image: Image.Image, low: float = CANNY_LOW, high: float = CANNY_HIGH) -> Image.Image:
    """White edges on black (RGB), by the Canny method: blur, Sobel gradients, thinning along the gradient, then a
    double threshold where weak edges survive only when connected to strong ones."""
    gray = image.convert("L").filter(ImageFilter.GaussianBlur(CANNY_BLUR_RADIUS))
    values = np.asarray(gray, dtype=np.float32)
    gx, gy = _sobel(values)
    magnitude = np.hypot(gx, gy)
    thin = _non_maximum_suppression(magnitude, gx, gy)
    strong = thin >= high
    weak = thin >= low
    edges = _hysteresis(strong, weak)
    hint = Image.fromarray(np.where(edges, 255, 0).astype(np.uint8), "L")
    return hint.convert("RGB")


def _sobel(values: Array) -> tuple[Array, Array]:
    padded = np.pad(values, 1, mode="edge")
    # 3×3 Sobel as sums of shifted views: [1 2 1] smoothing across, [-1 0 1] difference along.
    rows = padded[:-2] + 2 * padded[1:-1] + padded[2:]
    gx = rows[:, 2:] - rows[:, :-2]
    cols = padded[:, :-2] + 2 * padded[:, 1:-1] + padded[:, 2:]
    gy = cols[2:] - cols[:-2]
    return gx, gy


def _non_maximum_suppression(magnitude: Array, gx: Array, gy: Array) -> Array:
    """Keep a pixel only where it is the largest along its gradient direction (quantised to 4 directions)."""
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    padded = np.pad(magnitude, 1, mode="constant")
    height, width = magnitude.shape

    def shifted(dy: int, dx: int) -> Array:
        return padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

    # Direction bins: 0° (left/right), 45°, 90° (up/down), 135°; image rows grow downwards.
    bins = [
        ((angle < 22.5) | (angle >= 157.5), (0, 1)),
        ((angle >= 22.5) & (angle < 67.5), (1, 1)),
        ((angle >= 67.5) & (angle < 112.5), (1, 0)),
        ((angle >= 112.5) & (angle < 157.5), (1, -1)),
    ]
    keep = np.zeros_like(magnitude, dtype=bool)
    for in_bin, (dy, dx) in bins:
        local_max = (magnitude >= shifted(dy, dx)) & (magnitude >= shifted(-dy, -dx))
        keep |= in_bin & local_max
    return np.where(keep, magnitude, 0.0)


def _hysteresis(strong: Array, weak: Array) -> Array:
    """Grow the strong edges through 8-connected weak pixels until nothing changes."""
    edges = strong.copy()
    while True:
        mask = Image.fromarray(np.where(edges, 255, 0).astype(np.uint8), "L")
        grown = (np.asarray(mask.filter(ImageFilter.MaxFilter(3))) > 0) & weak
        if np.array_equal(grown, edges):
            return edges
        edges = grown | edges
