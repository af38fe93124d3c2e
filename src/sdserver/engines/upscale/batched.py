"""Several images through one network together: forward batches mix equal-shaped tiles of all of them, and each
image is stitched back exactly as it would be alone (same tiling plan, same finishing)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch import Tensor

from sdserver.engines.upscale.runner import Planes, Upscaler, UpscaleResult, check_scale, make_finish, split_planes
from sdserver.engines.upscale.tiling import (
    Finish,
    OnTile,
    Tile,
    canvas,
    effective_tile,
    is_out_of_memory,
    paste,
    plan_tiles,
    window,
)

Stopped = Callable[[], bool]


@dataclass(frozen=True)
class Request:
    """One image of the batch: its output scale, where its progress goes, and whether it left the batch (a
    cancelled job's remaining tiles are skipped)."""

    image: Image.Image
    scale: float
    on_tile: OnTile | None = None
    stopped: Stopped = lambda: False


@dataclass(eq=False)
class _Member:
    """A request being worked on (compared and hashed by identity)."""

    request: Request
    planes: Planes
    colour: Tensor
    tiles: list[Tile]
    finish: Finish
    output: npt.NDArray[np.generic] | None = None
    done: int = 0


def upscale_together(
    upscaler: Upscaler, requests: Sequence[Request], *, tile: int | None = None, forward_batch: int = 1
) -> list[UpscaleResult | None]:
    """Each request upscaled as `upscaler.upscale_with_info` would do it alone, None for one that stopped. Tiles of
    one shape (any image's) share forward batches of up to `forward_batch`, taken round-robin over the images so
    they all progress together. A forward batch out of memory is retried in halves; a single tile out of memory
    propagates (the caller reruns the images one by one, where the tile loop retries with smaller tiles)."""
    if not requests:
        return []
    size = upscaler.tile_or_default(tile)
    members = []
    for request in requests:
        check_scale(request.scale)
        planes = split_planes(request.image)
        colour = upscaler.network_input(planes)
        _, _, height, width = colour.shape
        tiles = plan_tiles(height, width, size, upscaler.tile_pad, upscaler.multiple)
        members.append(_Member(request, planes, colour, tiles, make_finish(planes.layout)))
    queues: dict[tuple[int, int], list[tuple[_Member, Tile]]] = {}
    for index in range(max(len(member.tiles) for member in members)):
        for member in members:
            if index < len(member.tiles):
                piece = member.tiles[index]
                shape = (piece.rows.stop - piece.rows.start, piece.cols.stop - piece.cols.start)
                queues.setdefault(shape, []).append((member, piece))
    batch = max(1, forward_batch)
    with torch.inference_mode():
        for queue in queues.values():
            batch = _run_queue(upscaler, queue, batch)
    results: list[UpscaleResult | None] = []
    for member in members:
        request = member.request
        if member.output is None or member.done < len(member.tiles) or request.stopped():
            results.append(None)
            continue
        _, _, height, width = member.colour.shape
        image = upscaler.finish_image(member.output, member.planes, request.image.size, request.scale)
        results.append(UpscaleResult(image, effective_tile(size, height, width)))
    return results


def _run_queue(upscaler: Upscaler, queue: list[tuple[_Member, Tile]], forward_batch: int) -> int:
    """Equal-shaped tiles in forward batches; each member's outputs are finished and pasted into its own canvas.
    A forward batch that runs out of memory is retried in halves (the tiles already stitched stay); a single tile
    that does not fit raises. Returns the forward batch size that worked."""
    position = 0
    while position < len(queue):
        first = position
        group: list[tuple[_Member, Tile]] = []
        while position < len(queue) and len(group) < forward_batch:
            member, piece = queue[position]
            position += 1
            if not member.request.stopped():
                group.append((member, piece))
        if not group:
            continue
        output: Tensor | None = None
        try:
            output = upscaler.forward(torch.cat([window(member.colour, piece) for member, piece in group]))
        except RuntimeError as exc:
            if len(group) == 1 or not is_out_of_memory(exc):
                raise
        if output is None:
            # Out of the except block, so the traceback's frames no longer pin the failed batch's tensors.
            upscaler.free_memory()
            forward_batch, position = max(1, len(group) // 2), first
            continue
        rows: dict[_Member, list[tuple[int, Tile]]] = {}
        for row, (member, piece) in enumerate(group):
            rows.setdefault(member, []).append((row, piece))
        for member, mine in rows.items():
            # Finishing is per pixel, so finishing a member's rows apart from the others' changes nothing.
            pixels = member.finish(output[[row for row, _ in mine]])
            if member.output is None:
                height, width = member.colour.shape[-2:]
                member.output = canvas(height, width, upscaler.scale, pixels)
            for offset, (_, piece) in enumerate(mine):
                paste(member.output, piece, pixels[offset], upscaler.scale)
            member.done += len(mine)
        for member in rows:
            if member.request.on_tile is not None:
                member.request.on_tile(member.done, len(member.tiles))
    return forward_batch
