"""Tiles cover the image with equal windows and enough context; tiled ≈ untiled; out of memory halves the tile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from sdserver.engines.base import DeviceOutOfMemory
from sdserver.engines.upscale.runner import Upscaler, load_upscaler
from sdserver.engines.upscale.tiling import MIN_TILE, plan_axis, plan_tiles, smaller_tile
from sdserver.engines.upscale.tiny import write_official_weights


def smooth_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """Random colour blobs: structure at several scales, like a photo, unlike white noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return Image.fromarray(small, "RGB").resize((width, height), Image.Resampling.BICUBIC)


@pytest.mark.parametrize(
    ("length", "tile", "pad", "multiple"),
    [(100, 32, 8, 1), (300, 256, 16, 1), (97, 20, 6, 2), (64, 16, 16, 4), (10, 4, 2, 4), (33, 32, 16, 1)],
)
def test_axis_plan_covers_everything_with_equal_windows_and_context(
    length: int, tile: int, pad: int, multiple: int
) -> None:
    padded = length + -length % multiple
    spans = plan_axis(padded, tile, pad, multiple)
    covered = [index for span in spans for index in range(span.core_start, span.core_stop)]
    assert covered == list(range(padded))
    assert len({span.stop - span.start for span in spans}) == 1
    for span in spans:
        assert span.start % multiple == 0 and (span.stop - span.start) % multiple == 0
        assert 0 <= span.start <= span.core_start < span.core_stop <= span.stop <= padded
        assert span.core_start - span.start >= min(pad, span.core_start)
        assert span.stop - span.core_stop >= min(pad, padded - span.core_stop)
        assert span.core_stop - span.core_start <= max(tile, multiple) + multiple


def test_small_images_are_one_window() -> None:
    assert len(plan_tiles(48, 64, 64, 16)) == 1
    assert len(plan_tiles(48, 64, 0, 16)) == 1
    assert len(plan_tiles(65, 64, 64, 16)) == 2


def test_halving_stays_aligned() -> None:
    assert smaller_tile(256, 1000, 1000) == 128
    assert smaller_tile(0, 300, 200) == 144
    assert smaller_tile(60, 1000, 1000) == 24


@pytest.mark.parametrize("model_id", ["RealESRGAN_x2plus", "realesr-general-x4v3", "RealESRGAN_x4plus_anime_6B"])
def test_tiled_output_matches_the_whole_image_run(tmp_path: Path, model_id: str) -> None:
    upscaler = load_upscaler(write_official_weights(tmp_path, model_id), precision="fp32")
    image = smooth_image(70, 54)
    whole = upscaler.upscale_with_info(image, upscaler.scale, tile=0)
    tiled = upscaler.upscale_with_info(image, upscaler.scale, tile=32)
    assert (whole.tile, tiled.tile) == (0, 32)
    difference = np.abs(np.asarray(whole.image, np.float32) - np.asarray(tiled.image, np.float32))
    assert difference.mean() < 1.0, f"mean difference {difference.mean():.3f} grey levels"
    assert np.asarray(whole.image, np.float32).std() > 5.0  # the comparison is between real images, not flat ones


def test_batched_tiles_give_the_same_pixels(tmp_path: Path) -> None:
    path = write_official_weights(tmp_path, "realesr-general-x4v3")
    image = smooth_image(70, 54)
    single = load_upscaler(path, precision="fp32").upscale(image, 4, tile=32)
    batched = load_upscaler(path, precision="fp32", tile_batch=4).upscale(image, 4, tile=32)
    difference = np.abs(np.asarray(single, np.int16) - np.asarray(batched, np.int16))
    assert difference.max() <= 1


class RunsOutOfMemory(nn.Module):
    """Wraps a network and raises torch.OutOfMemoryError for windows longer than `limit` on a side."""

    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit = inner, limit
        self.sides: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.sides.append(max(x.shape[-2:]))
        if max(x.shape[-2:]) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        out: Tensor = self.inner(x)
        return out


def oom_upscaler(tmp_path: Path, limit: int) -> tuple[Upscaler, RunsOutOfMemory]:
    upscaler = load_upscaler(write_official_weights(tmp_path, "realesr-general-x4v3"), precision="fp32", tile_pad=8)
    fake = RunsOutOfMemory(upscaler.model, limit)
    upscaler.model = fake
    return upscaler, fake


def test_out_of_memory_halves_the_tile_and_retries(tmp_path: Path) -> None:
    upscaler, fake = oom_upscaler(tmp_path, limit=60)
    progress: list[tuple[int, int]] = []
    result = upscaler.upscale_with_info(smooth_image(128, 96), 4, tile=128, on_tile=lambda *step: progress.append(step))
    assert result.tile == 32
    assert result.image.size == (512, 384)
    assert fake.sides[:3] == [128, 80, 48]  # whole image, 64px tiles + context, then 32px tiles + context
    assert progress[-1] == (12, 12)
    reference = load_upscaler(write_official_weights(tmp_path, "realesr-general-x4v3"), precision="fp32")
    whole = np.asarray(reference.upscale(smooth_image(128, 96), 4, tile=0), np.float32)
    assert np.abs(whole - np.asarray(result.image, np.float32)).mean() < 1.0


def test_out_of_memory_at_the_smallest_tile_gives_up(tmp_path: Path) -> None:
    upscaler, fake = oom_upscaler(tmp_path, limit=8)
    with pytest.raises(DeviceOutOfMemory, match=f"even in {MIN_TILE}px tiles"):
        upscaler.upscale(smooth_image(80, 80), 4, tile=0)
    assert fake.sides == [80, 56]  # whole, then 40px tiles in 56px windows; 20px would be below the minimum


def test_other_errors_are_not_retried(tmp_path: Path) -> None:
    upscaler, _ = oom_upscaler(tmp_path, limit=1000)

    def broken(_: Tensor) -> Tensor:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    upscaler.model.forward = broken
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        upscaler.upscale(smooth_image(40, 40), 4, tile=16)
