"""Which family a LoRA was trained for, from its safetensors header (key names and the width of one attention
projection); None when the keys do not tell, and such a LoRA is let through."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from sdserver.catalog.families.checkpoints import CheckpointHeader, read_safetensors_header
from sdserver.catalog.families.kinds import FamilyInfo, ModelFamily
from sdserver.errors import UnsupportedModelError

# Names only one family's LoRAs use (kohya and diffusers spellings).
_FLUX_MARKERS: Final = ("single_transformer_blocks", "single_blocks", "double_blocks")
_SD3_MARKERS: Final = ("joint_blocks", "context_block")
_SDXL_MARKERS: Final = ("lora_te1_", "lora_te2_", "text_encoder_2.", "te2.")
_DOWN_WEIGHTS: Final = ("lora_down.weight", "lora_A.weight", "lora.down.weight")
# The text context a UNet LoRA's cross-attention key projection reads: the family's text encoder width.
_CONTEXT_FAMILIES: Final = {
    768: ModelFamily.SD15,
    1024: ModelFamily.SD2,
    2048: ModelFamily.SDXL,
    1280: ModelFamily.SDXL_REFINER,
}


def lora_family(header: CheckpointHeader) -> ModelFamily | None:
    """The family the LoRA's keys name; None when they do not tell."""
    keys = header.shapes
    if any(marker in key for key in keys for marker in _FLUX_MARKERS):
        return ModelFamily.FLUX
    if any(marker in key for key in keys for marker in _SD3_MARKERS):
        return ModelFamily.SD3
    widths = {
        shape[-1]
        for key, shape in keys.items()
        if "attn2" in key and "to_k" in key and key.endswith(_DOWN_WEIGHTS) and len(shape) == 2
    }
    if len(widths) == 1 and (width := min(widths)) in _CONTEXT_FAMILIES:
        return _CONTEXT_FAMILIES[width]
    if any(key.startswith(_SDXL_MARKERS) for key in keys):
        return ModelFamily.SDXL
    return None


def detect_lora(path: Path) -> FamilyInfo | None:
    """The family of a LoRA file (None: not a safetensors file, or keys that do not tell)."""
    try:
        family = lora_family(read_safetensors_header(path))
    except UnsupportedModelError:
        return None
    if family is None:
        return None
    return FamilyInfo(family, None, evidence="the LoRA's key names and attention widths")
