"""`Upscaler`: a loaded network that upscales PIL images by any factor, keeping alpha, greyscale and 16-bit grey."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from sdserver.engines.precision import PrecisionSetting, choose_placement
from sdserver.engines.upscale.archs import ArchSpec
from sdserver.engines.upscale.tiling import OnTile, run_tiles_with_retry
from sdserver.engines.upscale.weights import load_network

MIN_SCALE: Final = 1.0
MAX_SCALE: Final = 4.0
# Tiles on the CPU stay cache-friendly and bound memory; a GPU has room for (and runs faster in) bigger ones.
DEFAULT_TILE_CPU: Final = 256
DEFAULT_TILE_GPU: Final = 512
# Context around each tile, in input pixels: enough that tiled output matches the whole-image run closely.
DEFAULT_TILE_PAD: Final = 16
# ITU-R 601 luma, the weights Pillow uses for RGB -> L: greyscale in, greyscale out.
LUMA: Final = (0.299, 0.587, 0.114)
# Pillow's modes for 16-bit greyscale; PNG decodes 16-bit grey to one of them.
GREY16_MODES: Final = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
RESAMPLE: Final = Image.Resampling.LANCZOS

Layout = Literal["RGB", "L", "I;16"]


@dataclass(frozen=True)
class Planes:
    """An input split for the network: colour as 1×3×H×W floats in [0, 1], alpha kept aside, the output layout."""

    colour: Tensor
    alpha: Image.Image | None
    layout: Layout


@dataclass(frozen=True)
class UpscaleResult:
    image: Image.Image
    tile: int


def split_planes(image: Image.Image) -> Planes:
    """Greyscale stays greyscale (16-bit grey at full depth); colour goes in as RGB; alpha is taken off."""
    mode = image.mode
    if mode in GREY16_MODES:
        grey = np.clip(np.asarray(image, dtype=np.float32), 0, 65535) / 65535.0
        return Planes(_to_tensor(np.repeat(grey[..., None], 3, axis=2)), None, "I;16")
    if mode in ("1", "L", "LA", "La"):
        has_alpha = mode in ("LA", "La") or "transparency" in image.info
        with_alpha = image.convert("LA") if has_alpha else None
        grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        alpha = with_alpha.getchannel("A") if with_alpha is not None else None
        return Planes(_to_tensor(np.repeat(grey[..., None], 3, axis=2)), alpha, "L")
    if "transparency" in image.info or mode in ("RGBA", "RGBa", "P", "PA"):
        rgba = image.convert("RGBA")
        rgb = np.asarray(rgba.convert("RGB"), dtype=np.float32) / 255.0
        return Planes(_to_tensor(rgb), rgba.getchannel("A"), "RGB")
    return Planes(_to_tensor(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0), None, "RGB")


def _to_tensor(pixels: npt.NDArray[np.float32]) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]


def check_scale(scale: float) -> None:
    if not MIN_SCALE <= scale <= MAX_SCALE:
        raise ValueError(f"scale must be between {MIN_SCALE:g} and {MAX_SCALE:g}, got {scale!r}")


def output_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The requested size: each side times `scale`, rounded half up, at least 1."""
    return max(1, math.floor(width * scale + 0.5)), max(1, math.floor(height * scale + 0.5))


def make_finish(layout: Layout) -> Callable[[Tensor], npt.NDArray[np.generic]]:
    """Network output (B×3×h×w, any dtype/device) to stitched pixels: clamped, rounded, 8- or 16-bit, on the CPU."""
    peak = 65535.0 if layout == "I;16" else 255.0

    def finish(batch: Tensor) -> npt.NDArray[np.generic]:
        values = batch.float().clamp_(0.0, 1.0)
        if layout != "RGB":
            weights = torch.tensor(LUMA, dtype=values.dtype, device=values.device).view(1, 3, 1, 1)
            values = (values * weights).sum(dim=1, keepdim=True)
        scaled = values.mul_(peak).round_().permute(0, 2, 3, 1)
        if layout == "I;16":
            return scaled.to(torch.int32).cpu().numpy().astype(np.uint16)
        return scaled.to(torch.uint8).cpu().numpy()

    return finish


def to_image(pixels: npt.NDArray[np.generic], layout: Layout) -> Image.Image:
    if layout == "RGB":
        return Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    # One-channel arrays come from the luma step; Pillow picks L for uint8 and I;16 for uint16.
    return Image.fromarray(np.ascontiguousarray(pixels[..., 0]))


class Upscaler:
    """A loaded network on a device in one precision. `upscale` runs it at its native scale in tiles, then resizes
    to the requested factor with Lanczos; the alpha channel is resized with Lanczos only (never hallucinated)."""

    def __init__(
        self,
        model: nn.Module,
        spec: ArchSpec,
        *,
        device: torch.device | str | None = None,
        precision: PrecisionSetting = "auto",
        tile_pad: int = DEFAULT_TILE_PAD,
        tile_batch: int = 1,
    ) -> None:
        placement = choose_placement(precision, device)
        self.device = torch.device(placement.device)
        self.dtype = placement.dtype
        self.precision: str = placement.precision
        self.spec = spec
        self.scale = spec.scale
        self.tile_pad = tile_pad
        self.tile_batch = tile_batch
        self.default_tile = DEFAULT_TILE_GPU if self.device.type == "cuda" else DEFAULT_TILE_CPU
        self.multiple: int = getattr(model, "input_multiple", 1)
        # channels_last lets oneDNN (CPU) and cuDNN pick their fastest convolution kernels (about 1.5× on CPU).
        model = model.to(device=self.device, dtype=self.dtype)
        self.model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # untyped kwarg

    def upscale(
        self, image: Image.Image, scale: float, *, tile: int | None = None, on_tile: OnTile | None = None
    ) -> Image.Image:
        return self.upscale_with_info(image, scale, tile=tile, on_tile=on_tile).image

    def upscale_with_info(
        self, image: Image.Image, scale: float, *, tile: int | None = None, on_tile: OnTile | None = None
    ) -> UpscaleResult:
        """`image` upscaled by `scale` (1–4, fractions allowed); `tile` None = default, 0 = whole image."""
        check_scale(scale)
        planes = split_planes(image)
        with torch.inference_mode():
            pixels, used = run_tiles_with_retry(
                self.forward, self.network_input(planes), scale=self.scale, tile=self.tile_or_default(tile),
                pad=self.tile_pad, multiple=self.multiple, finish=make_finish(planes.layout), on_tile=on_tile,
                batch=self.tile_batch, free_memory=self.free_memory,
            )  # fmt: skip
        return UpscaleResult(self.finish_image(pixels, planes, image.size, scale), used)

    def tile_or_default(self, tile: int | None) -> int:
        return self.default_tile if tile is None else tile

    def network_input(self, planes: Planes) -> Tensor:
        """The colour planes padded to the network's input multiple (1×3×H×W)."""
        return _pad_to_multiple(planes.colour, self.multiple)

    def finish_image(
        self, pixels: npt.NDArray[np.generic], planes: Planes, size: tuple[int, int], scale: float
    ) -> Image.Image:
        """Stitched network pixels to the output image: padding cropped off, resized from the network's scale to
        `scale` times `size` (width, height), alpha put back."""
        width, height = size
        result = to_image(pixels[: height * self.scale, : width * self.scale], planes.layout)
        target = output_size(width, height, scale)
        if result.size != target:
            result = result.resize(target, RESAMPLE)
        if planes.alpha is not None:
            alpha = planes.alpha.resize(target, RESAMPLE)
            result = Image.merge("RGBA" if planes.layout == "RGB" else "LA", (*result.split(), alpha))
        return result

    def forward(self, batch: Tensor) -> Tensor:
        """The network on a batch of windows (B×3×h×w floats in [0, 1], any device): B×3×(h·scale)×(w·scale)."""
        inputs = batch.to(device=self.device, dtype=self.dtype).contiguous(memory_format=torch.channels_last)
        output: Tensor = self.model(inputs)
        return output

    def free_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _pad_to_multiple(colour: Tensor, multiple: int) -> Tensor:
    """Pixel-unshuffling networks need sides divisible by their factor; edge pixels are repeated, then cropped off."""
    height, width = colour.shape[-2:]
    bottom, right = -height % multiple, -width % multiple
    if not bottom and not right:
        return colour
    return F.pad(colour, (0, right, 0, bottom), mode="replicate")


def load_upscaler(
    path: Path | str,
    *,
    device: torch.device | str | None = None,
    precision: PrecisionSetting = "auto",
    tile_pad: int = DEFAULT_TILE_PAD,
    tile_batch: int = 1,
) -> Upscaler:
    """Load a weight file (.pth or .safetensors, architecture recognised from it) into a ready Upscaler."""
    model, spec = load_network(Path(path))
    return Upscaler(model, spec, device=device, precision=precision, tile_pad=tile_pad, tile_batch=tile_batch)
