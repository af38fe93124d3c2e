"""Model files that only look like a family: the configs of a diffusers folder, or a safetensors checkpoint whose
keys follow the family's original layout, with tiny tensors. Detection reads nothing else, so API tests of families
need no torch and take milliseconds; tests that generate use the real tiny models instead."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import numpy as np
from safetensors.numpy import save as save_safetensors

_UNET_INPUT: Final = "model.diffusion_model.input_blocks.0.0.weight"
# Text-encoder keys of each LDM single-file layout.
_TEXT_KEYS: Final = {
    "sd15": ("cond_stage_model.transformer.text_model.final_layer_norm.weight",),
    "sd2": ("cond_stage_model.model.ln_final.weight",),
    "sdxl": (
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
        "conditioner.embedders.1.model.ln_final.weight",
    ),
    "sdxl_refiner": ("conditioner.embedders.0.model.ln_final.weight",),
}


def checkpoint_bytes(family: str = "sd15", *, extra_floats: int = 0) -> bytes:
    """A safetensors checkpoint in `family`'s single-file layout (sd15, sd2, sdxl, sdxl_refiner, flux), padded with
    `extra_floats` float32 values for tests that need a big download."""
    tensors: dict[str, Any] = {}
    if family == "flux":
        tensors = {"double_blocks.0.img_attn.norm.key_norm.scale": np.zeros(4, np.float32)}
        tensors["img_in.weight"] = np.zeros((4, 64), np.float32)
        tensors["guidance_in.in_layer.weight"] = np.zeros((4, 4), np.float32)
    else:
        tensors[_UNET_INPUT] = np.zeros((4, 4, 3, 3), np.float32)
        tensors.update({key: np.zeros(4, np.float32) for key in _TEXT_KEYS[family]})
    if extra_floats:
        tensors["model.diffusion_model.padding"] = np.arange(extra_floats, dtype=np.float32)
    return save_safetensors(tensors)


def lora_bytes(context_width: int) -> bytes:
    """A kohya-style LoRA whose cross-attention key projection reads a `context_width`-wide text context (768: SD
    1.x, 1024: SD 2.x, 2048: SDXL)."""
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    return save_safetensors(
        {
            f"{key}.lora_down.weight": np.zeros((4, context_width), np.float32),
            f"{key}.lora_up.weight": np.zeros((320, 4), np.float32),
        }
    )


# What each folder layout's model_index.json and component configs say (detection reads only these).
_PIPELINES: Final = {
    "sd15": "StableDiffusionPipeline",
    "lcm": "StableDiffusionPipeline",
    "sd2v": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sdxl_refiner": "StableDiffusionXLImg2ImgPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
    "flux_schnell": "FluxPipeline",
}


def write_folder_model(models_dir: Path, model_id: str, layout: str = "sd15") -> Path:
    """A diffusers folder under `models_dir/diffusers/` whose configs say `layout` (see `_PIPELINES`); no weights."""
    folder = models_dir / "diffusers" / model_id
    index: dict[str, Any] = {"_class_name": _PIPELINES[layout], "vae": ["diffusers", "AutoencoderKL"]}
    if layout.startswith(("sd3", "flux")):
        index |= {"transformer": ["diffusers", "Transformer"], "text_encoder": ["transformers", "CLIPTextModel"]}
        index |= {"text_encoder_2": ["transformers", "T5EncoderModel"]}
        _write(folder / "transformer" / "config.json", {"in_channels": 64, "guidance_embeds": layout == "flux"})
    else:
        index["unet"] = ["diffusers", "UNet2DConditionModel"]
        index["text_encoder"] = None if layout == "sdxl_refiner" else ["transformers", "CLIPTextModel"]
        if layout.startswith("sdxl"):
            index["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
        width = {"sd2v": 1024, "sdxl": 2048, "sdxl_refiner": 1280}.get(layout, 768)
        _write(folder / "unet" / "config.json", {"cross_attention_dim": width, "in_channels": 4})
        scheduler = {"_class_name": "LCMScheduler" if layout == "lcm" else "EulerDiscreteScheduler"}
        scheduler["prediction_type"] = "v_prediction" if layout == "sd2v" else "epsilon"
        _write(folder / "scheduler" / "scheduler_config.json", scheduler)
    _write(folder / "model_index.json", index)
    return folder


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
