"""Tiny seeded add-ons for the tiny models: a peft LoRA, VAEs (diffusers folder and original-layout single file)
and textual-inversion embeddings, written where `find_addon` looks for them."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from sdserver.catalog.layout import AddonKind, addon_dir
from tests.support.tiny_sd import build_tiny_pipeline, original_layout_state_dict

TEXT_HIDDEN = 32
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def make_tiny_lora(models_dir: Path, lora_id: str, seed: int = 7) -> Path:
    """A rank-4 LoRA on the tiny UNet's attention, saved in diffusers/peft layout. Its B matrices are random
    (not zero as in training start), so it changes outputs."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = build_tiny_pipeline()
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=LORA_TARGETS, init_lora_weights=False)
    pipe.unet.add_adapter(config)
    folder = addon_dir(models_dir, AddonKind.LORA)
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=get_peft_model_state_dict(pipe.unet), weight_name=f"{lora_id}.safetensors"
    )
    return folder / f"{lora_id}.safetensors"


def make_tiny_vae(models_dir: Path, vae_id: str, seed: int = 5, *, single_file: bool = False) -> Path:
    """The VAE of a tiny model built with another seed: a diffusers folder, or one file in the original (LDM)
    layout as A1111 VAE files come."""
    pipe = build_tiny_pipeline(seed)
    folder = addon_dir(models_dir, AddonKind.VAE)
    if not single_file:
        pipe.vae.save_pretrained(folder / vae_id, safe_serialization=True)
        return folder / vae_id
    prefix = "first_stage_model."
    state = {
        key.removeprefix(prefix): value
        for key, value in original_layout_state_dict(pipe).items()
        if key.startswith(prefix)
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in state.items()}, folder / f"{vae_id}.safetensors")
    return folder / f"{vae_id}.safetensors"


def make_tiny_embedding(models_dir: Path, embedding_id: str, seed: int = 3, vectors: int = 1) -> Path:
    """A textual-inversion embedding for the tiny text encoder (`emb_params`, the A1111 safetensors layout)."""
    generator = torch.Generator().manual_seed(seed)
    folder = addon_dir(models_dir, AddonKind.EMBEDDING)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{embedding_id}.safetensors"
    save_file({"emb_params": torch.randn(vectors, TEXT_HIDDEN, generator=generator)}, path)
    return path
