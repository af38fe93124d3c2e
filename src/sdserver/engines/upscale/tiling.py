"""Run a network over an image in overlapping tiles, so memory stays bounded; on out-of-memory, halve and retry."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from sdserver.engines.base import DeviceOutOfMemory

# Below this a tile is mostly overlap; an image that will not run in such tiles will not run at all.
MIN_TILE: Final = 32
# Tile sides after halving stay multiples of this (and so of every pixel-unshuffle factor).
TILE_ALIGN: Final = 8

Forward = Callable[[Tensor], Tensor]
Finish = Callable[[Tensor], npt.NDArray[np.generic]]
OnTile = Callable[[int, int], None]


@dataclass(frozen=True)
class Span:
    """One axis of a tile: the window the network sees, and the core inside it whose output is kept."""

    start: int
    stop: int
    core_start: int
    core_stop: int


@dataclass(frozen=True)
class Tile:
    rows: Span
    cols: Span


def plan_axis(length: int, tile: int, pad: int, multiple: int = 1) -> list[Span]:
    """Cores of equal size (a multiple of `multiple`) covering `length`, each in a window of the same size with at
    least `pad` pixels of context on every side that is not the image border. Equal windows batch together."""
    if tile <= 0 or length <= tile:
        return [Span(0, length, 0, length)]
    pad = math.ceil(pad / multiple) * multiple
    count = math.ceil(length / tile)
    core = math.ceil(math.ceil(length / count) / multiple) * multiple
    count = math.ceil(length / core)
    window = min(length, core + 2 * pad)
    spans = []
    for index in range(count):
        core_start, core_stop = index * core, min(length, (index + 1) * core)
        # Windows near the border slide inwards instead of shrinking: more context there, same shape everywhere.
        start = min(max(core_start - pad, 0), length - window)
        spans.append(Span(start, start + window, core_start, core_stop))
    return spans


def plan_tiles(height: int, width: int, tile: int, pad: int, multiple: int = 1) -> list[Tile]:
    return [
        Tile(rows, cols)
        for rows in plan_axis(height, tile, pad, multiple)
        for cols in plan_axis(width, tile, pad, multiple)
    ]


def run_tiles(
    forward: Forward,
    image: Tensor,
    *,
    scale: int,
    tile: int,
    pad: int,
    multiple: int,
    finish: Finish,
    on_tile: OnTile | None = None,
    batch: int = 1,
) -> npt.NDArray[np.generic]:
    """`forward` over `image` (1×C×H×W) tile by tile; `finish` turns each output batch (B×C×h×w) into pixels
    (B×h×w×channels), which are stitched at `scale` times the size. `on_tile(done, total)` runs after each batch."""
    _, _, height, width = image.shape
    tiles = plan_tiles(height, width, tile, pad, multiple)
    output: npt.NDArray[np.generic] | None = None
    for first in range(0, len(tiles), max(1, batch)):
        group = tiles[first : first + max(1, batch)]
        windows = [window(image, piece) for piece in group]
        pixels = finish(forward(torch.cat(windows)))
        if output is None:
            output = canvas(height, width, scale, pixels)
        for index, piece in enumerate(group):
            paste(output, piece, pixels[index], scale)
        if on_tile is not None:
            on_tile(first + len(group), len(tiles))
    assert output is not None  # plan_tiles always yields at least one tile
    return output


def window(image: Tensor, tile: Tile) -> Tensor:
    """The part of `image` (1×C×H×W) the network sees for `tile`."""
    return image[:, :, tile.rows.start : tile.rows.stop, tile.cols.start : tile.cols.stop]


def canvas(height: int, width: int, scale: int, like: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    """The empty stitched output for an input of `height`×`width`, in the channels and dtype of `like`'s pixels."""
    return np.empty((height * scale, width * scale, like.shape[-1]), dtype=like.dtype)


def paste(output: npt.NDArray[np.generic], tile: Tile, pixels: npt.NDArray[np.generic], scale: int) -> None:
    """Copy the core of one tile's output pixels (h×w×channels) into its place in the stitched `output`."""
    rows, cols = tile.rows, tile.cols
    output[rows.core_start * scale : rows.core_stop * scale, cols.core_start * scale : cols.core_stop * scale] = pixels[
        (rows.core_start - rows.start) * scale : (rows.core_stop - rows.start) * scale,
        (cols.core_start - cols.start) * scale : (cols.core_stop - cols.start) * scale,
    ]


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA raises torch.OutOfMemoryError; other devices and CPU allocations raise a plain RuntimeError."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


def smaller_tile(tile: int, height: int, width: int) -> int:
    """Half the tile (a whole-image run counts as a tile of the longer side), kept a multiple of TILE_ALIGN."""
    current = tile if 0 < tile < max(height, width) else max(height, width)
    return (current // 2) // TILE_ALIGN * TILE_ALIGN


def effective_tile(tile: int, height: int, width: int) -> int:
    """The tile size that was really used: 0 when one window covered the whole image."""
    return 0 if tile <= 0 or (height <= tile and width <= tile) else tile


def run_tiles_with_retry(
    forward: Forward,
    image: Tensor,
    *,
    scale: int,
    tile: int,
    pad: int,
    multiple: int,
    finish: Finish,
    on_tile: OnTile | None = None,
    batch: int = 1,
    free_memory: Callable[[], None] = lambda: None,
) -> tuple[npt.NDArray[np.generic], int]:
    """`run_tiles`, retried with half the tile (from scratch) after each out-of-memory error; raises
    DeviceOutOfMemory when even MIN_TILE does not fit. Returns the pixels and the tile size used (0: whole)."""
    _, _, height, width = image.shape
    while True:
        try:
            pixels = run_tiles(
                forward, image, scale=scale, tile=tile, pad=pad, multiple=multiple,
                finish=finish, on_tile=on_tile, batch=batch,
            )  # fmt: skip
            return pixels, effective_tile(tile, height, width)
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            message = str(exc).splitlines()[0]
        # Out of the except block, so the traceback (and the tensors its frames hold) is gone before retrying.
        free_memory()
        if batch > 1:
            batch = 1
            continue
        tile = smaller_tile(tile, height, width)
        if tile < MIN_TILE:
            raise DeviceOutOfMemory(f"out of memory even in {MIN_TILE}px tiles: {message}")
