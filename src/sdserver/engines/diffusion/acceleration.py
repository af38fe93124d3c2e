"""Speed-ups for a loaded model on its device: TF32 and channels_last on CUDA, VAE tiling for images too large to
decode at once, and torch.compile of the denoiser behind a setting (compiled and warmed up while the model loads,
so no job pays for it)."""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import torch

log = logging.getLogger(__name__)

# Above this many pixels per image the VAE decodes in overlapping, blended tiles: a 2048×2048 decode at once needs
# tens of GB of activations; tiles need a fraction, at the cost of faint seams the blending hides.
VAE_TILE_PIXELS: Final = 2048 * 2048
# The modules that denoise, by family: a UNet (SD 1.x/2.x, SDXL) or a transformer (SD3, Flux).
DENOISERS: Final = ("unet", "transformer")


def allow_tf32(device: str) -> None:
    """fp32 matmuls and convolutions in TF32 on CUDA (Ampere and later): several times faster for fp32 models,
    no effect on fp16/bf16 ones. Safe here: TF32 keeps fp32's range and its rounding is far below the sampler's."""
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def use_channels_last(base: Any, device: str) -> None:
    """The convolutional modules (UNet, VAE) in channels_last on CUDA, where cuDNN's fastest kernels are NHWC.
    (On CPU oneDNN picks its own layout; converting there only costs copies.)"""
    if not device.startswith("cuda"):
        return
    for name in ("unet", "vae"):
        module = getattr(base, name, None)
        if isinstance(module, torch.nn.Module):
            module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # untyped kwarg


def tile_vae_for(pipeline: Any, width: int, height: int, threshold: int = VAE_TILE_PIXELS) -> bool:
    """Turn the pipeline's VAE tiling on for images above `threshold` pixels, off below (the VAE is shared by
    every pipeline of the model, so each run sets it for its own size). True when tiled."""
    vae = getattr(pipeline, "vae", None)
    if vae is None or not hasattr(vae, "enable_tiling"):
        return False
    large = width * height > threshold
    if large:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
    return large


def compile_denoiser(base: Any, backend: str) -> list[str]:
    """Wrap the model's denoiser in torch.compile (before the other pipelines are built from `base`, so they share
    the compiled module); the names of the modules compiled."""
    compiled = []
    for name in DENOISERS:
        module = getattr(base, name, None)
        if isinstance(module, torch.nn.Module):
            setattr(base, name, torch.compile(module, backend=backend))
            compiled.append(name)
    return compiled


def warm_up(pipeline: Any, size: int) -> float:
    """One 1-step text-to-image call at the family's default size, so the first job does not pay for compiling;
    the seconds it took (part of the model's load time)."""
    started = time.monotonic()
    with torch.inference_mode():
        pipeline(prompt="", num_inference_steps=1, width=size, height=size, output_type="latent")
    seconds = time.monotonic() - started
    log.info("compiled denoiser warmed up at %dx%d in %.1f s", size, size, seconds)
    return seconds
