"""Writes a tiny family model where the engine looks for models: a diffusers folder, or an original-layout
`.safetensors` checkpoint with a `<id>.config/` folder (configs and tokenizers, no weights) beside it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import torch
from safetensors.torch import save_file

from sdserver.catalog.layout import CHECKPOINTS_DIR, CONFIG_DIR_SUFFIX, DIFFUSERS_DIR
from sdserver.engines.diffusion.tiny_families import original_layout as layout
from sdserver.engines.diffusion.tiny_families.names import FOLDER_ONLY, TinyFamily
from sdserver.engines.diffusion.tiny_families.recipes import build_tiny_family_pipeline

Tensors = dict[str, torch.Tensor]


def make_tiny_family_model(
    models_dir: Path,
    model_id: str,
    family: TinyFamily | str = TinyFamily.SD15,
    *,
    single_file: bool = False,
    seed: int = 0,
    inpainting: bool = False,
) -> Path:
    """Write a tiny `family` model under `models_dir`; returns the folder or the checkpoint file.
    Raises ValueError for a form the family lacks (Flux single files, inpainting SD3)."""
    family = TinyFamily(family)
    if single_file and family in FOLDER_ONLY:
        raise ValueError(f"single_file: {FOLDER_ONLY[family]}, got family={family.value!r}")
    pipe = build_tiny_family_pipeline(family, seed=seed, inpainting=inpainting)
    checkpoint: Callable[[Any], Tensors] | None = (
        (lambda built: original_checkpoint(family, built)) if single_file else None
    )
    return write_tiny_model(models_dir, model_id, pipe, checkpoint)


def write_tiny_model(
    models_dir: Path, model_id: str, pipe: Any, checkpoint: Callable[[Any], Tensors] | None = None
) -> Path:
    """Save `pipe` as a diffusers folder, or (with `checkpoint`, which renames its weights to the original layout)
    as a single `.safetensors` checkpoint beside a `<id>.config/` folder; returns the folder or the file."""
    if checkpoint is None:
        folder = models_dir / DIFFUSERS_DIR / model_id
        pipe.save_pretrained(folder, safe_serialization=True)
        return folder
    checkpoints = models_dir / CHECKPOINTS_DIR
    config_dir = checkpoints / f"{model_id}{CONFIG_DIR_SUFFIX}"
    pipe.save_pretrained(config_dir, safe_serialization=True)
    # The config folder keeps configs and tokenizers only: the weights come from the checkpoint.
    for weights in config_dir.rglob("*.safetensors"):
        weights.unlink()
    file = checkpoints / f"{model_id}.safetensors"
    state = checkpoint(pipe)
    # Copies: safetensors refuses tensors that share memory (T5's tied embeddings, the fused qkv views).
    save_file({key: value.detach().contiguous().clone() for key, value in state.items()}, file)
    return file


def original_checkpoint(family: TinyFamily, pipe: Any) -> Tensors:
    """The pipeline's weights in the family's original single-file layout."""
    return SINGLE_FILE_LAYOUTS[family](pipe)


def _sd1(pipe: Any) -> Tensors:
    return {
        **_ldm_core(pipe),
        **layout.prefixed("cond_stage_model.transformer.", layout.clip_to_hf(pipe.text_encoder, projection=False)),
    }


def _sd2(pipe: Any) -> Tensors:
    return {
        **_ldm_core(pipe),
        **layout.prefixed("cond_stage_model.model.", layout.clip_to_open_clip(pipe.text_encoder)),
    }


def _sdxl(pipe: Any) -> Tensors:
    clip_l = layout.clip_to_hf(pipe.text_encoder, projection=False)
    return {
        **_ldm_core(pipe, ddpm_buffers=False),
        **layout.prefixed("conditioner.embedders.0.transformer.", clip_l),
        **layout.prefixed("conditioner.embedders.1.model.", layout.clip_to_open_clip(pipe.text_encoder_2)),
    }


def _sdxl_refiner(pipe: Any) -> Tensors:
    return {
        **_ldm_core(pipe, ddpm_buffers=False),
        **layout.prefixed("conditioner.embedders.0.model.", layout.clip_to_open_clip(pipe.text_encoder_2)),
    }


def _sd3(pipe: Any) -> Tensors:
    # The "incl_clips_t5xxl" form: MMDiT, VAE and all three text encoders in one file.
    return {
        **layout.prefixed("model.diffusion_model.", layout.mmdit_to_sd3(pipe.transformer)),
        **layout.prefixed("first_stage_model.", layout.vae_to_ldm(pipe.vae)),
        **layout.prefixed("text_encoders.clip_l.transformer.", layout.clip_to_hf(pipe.text_encoder, projection=False)),
        **layout.prefixed("text_encoders.clip_g.transformer.", layout.clip_to_hf(pipe.text_encoder_2)),
        **layout.prefixed("text_encoders.t5xxl.transformer.", layout.t5_to_hf(pipe.text_encoder_3)),
    }


def _ldm_core(pipe: Any, *, ddpm_buffers: bool = True) -> Tensors:
    state = {
        **layout.prefixed("model.diffusion_model.", layout.unet_to_ldm(pipe.unet)),
        **layout.prefixed("first_stage_model.", layout.vae_to_ldm(pipe.vae)),
    }
    if ddpm_buffers:
        # Training leftovers real SD 1.x/2.x files carry and loaders must ignore.
        state["alphas_cumprod"] = torch.linspace(0.999, 0.005, 1000)
        state["model_ema.decay"] = torch.tensor(0.9999)
    return state


SINGLE_FILE_LAYOUTS: Final[dict[TinyFamily, Callable[[Any], Tensors]]] = {
    TinyFamily.SD15: _sd1,
    TinyFamily.LCM: _sd1,
    TinyFamily.SD2V: _sd2,
    TinyFamily.SDXL: _sdxl,
    TinyFamily.SDXL_REFINER: _sdxl_refiner,
    TinyFamily.SD3: _sd3,
}
