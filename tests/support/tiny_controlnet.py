"""A tiny seeded ControlNet for the tiny SD model, saved where the engine looks for ControlNets."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ControlNetModel

from sdserver.catalog.layout import AddonKind, addon_dir
from tests.support.tiny_sd import build_tiny_pipeline

# The tiny VAE halves the image once (two blocks), so the hint encoder must downsample by 2 as well: two stages.
HINT_CHANNELS = (16, 32)
# Trained ControlNets have non-zero output convolutions; freshly made ones are zero (no effect at all).
ZERO_CONV_STD = 0.2


def make_tiny_controlnet(models_dir: Path, controlnet_id: str, *, seed: int = 0) -> Path:
    """Write a tiny ControlNet (a diffusers folder) for models made by `make_tiny_model`; returns the folder."""
    unet = build_tiny_pipeline(0).unet
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS)
    with torch.no_grad():
        zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
        zero_convs.append(controlnet.controlnet_cond_embedding.conv_out)
        for conv in zero_convs:
            conv.weight.normal_(0.0, ZERO_CONV_STD)
            conv.bias.normal_(0.0, ZERO_CONV_STD)
    folder = addon_dir(models_dir, AddonKind.CONTROLNET) / controlnet_id
    controlnet.save_pretrained(folder, safe_serialization=True)
    return folder
