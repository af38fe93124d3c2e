"""Tiny seeded SD-1.5-shaped models written to disk: a diffusers folder, or an original-layout single-file checkpoint.

Their outputs are noise: they exist so tests and demos load weights through the production path in under a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from sdserver.engines.diffusion.tiny_families.clip_vocab import tiny_tokenizer
from sdserver.engines.diffusion.tiny_families.names import TinyFamily
from sdserver.engines.diffusion.tiny_families.writer import original_checkpoint, write_tiny_model

LAYERS_PER_BLOCK = 1
UNET_CHANNELS = (32, 64)
VAE_CHANNELS = (32, 64)
# The SD 1.5 noise schedule, so scheduler behaviour matches real models.
SD15_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}


def make_tiny_model(
    models_dir: Path, model_id: str, *, single_file: bool = False, seed: int = 0, inpainting: bool = False
) -> Path:
    """Write a tiny model under `models_dir` where the engine looks for it; returns the folder or checkpoint file.
    `inpainting` makes a 9-channel UNet, like the SD 1.5 inpainting checkpoints."""
    pipe = build_tiny_pipeline(seed, in_channels=9 if inpainting else 4)
    return write_tiny_model(models_dir, model_id, pipe, original_layout_state_dict if single_file else None)


def build_tiny_pipeline(seed: int = 0, in_channels: int = 4) -> Any:
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    unet: Any = UNet2DConditionModel(  # type: ignore[no-untyped-call]
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=LAYERS_PER_BLOCK,
        block_out_channels=UNET_CHANNELS,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        norm_num_groups=32,
    )
    vae: Any = AutoencoderKL(  # type: ignore[no-untyped-call]
        in_channels=3,
        out_channels=3,
        block_out_channels=VAE_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS),
        latent_channels=4,
        layers_per_block=LAYERS_PER_BLOCK,
        norm_num_groups=32,
        sample_size=64,
    )
    text_encoder: Any = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_act="quick_gelu",
        )
    )
    return StableDiffusionPipeline(  # type: ignore[no-untyped-call]
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER),  # type: ignore[no-untyped-call]
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def original_layout_state_dict(pipe: Any) -> dict[str, torch.Tensor]:
    """The pipeline's weights renamed to the original (CompVis/LDM) single-file layout SD 1.x checkpoints use."""
    return original_checkpoint(TinyFamily.SD15, pipe)
