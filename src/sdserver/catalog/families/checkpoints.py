"""Family of a single-file `.safetensors` checkpoint, from its header alone (tensor names and shapes).

A safetensors file starts with an 8-byte little-endian header length and a JSON header naming every tensor with
its shape; reading it costs a few kilobytes whatever the file's size. The key layouts are the original ones
(CompVis/Stability LDM, Stability MMDiT, Black Forest Labs Flux) that diffusers' single-file loader reads too.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from sdserver.catalog.families.kinds import FamilyInfo, FewStep, ModelFamily, PredictionType
from sdserver.errors import UnsupportedModelError

# Real headers are well under 10 MB (a few thousand tensors); this bounds what a hostile file can make us read.
MAX_HEADER_BYTES: Final = 64 * 1024 * 1024
UNET: Final = "model.diffusion_model."
UNET_INPUT: Final = UNET + "input_blocks.0.0.weight"
VAE_PREFIXES: Final = ("first_stage_model.", "vae.")
# Text encoders of the LDM-family files, by key prefix: (family, diffusers component).
SD1_CLIP: Final = "cond_stage_model.transformer."
SD2_OPEN_CLIP: Final = "cond_stage_model.model."
SDXL_CLIP_L: Final = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_G: Final = "conditioner.embedders.1.model."
REFINER_OPEN_CLIP_G: Final = "conditioner.embedders.0.model."
# SD3 "incl_clips" files keep each text encoder under text_encoders.<name>.transformer (transformers layout).
SD3_TEXT_ENCODERS: Final = {
    "text_encoders.clip_l.": "text_encoder",
    "text_encoders.clip_g.": "text_encoder_2",
    "text_encoders.t5xxl.": "text_encoder_3",
}
FLUX_TEXT_ENCODERS: Final = {"text_encoders.clip_l.": "text_encoder", "text_encoders.t5xxl.": "text_encoder_2"}
# UNet cross-attention widths of the real families, for UNet-only files without a text encoder to go by.
_UNET_CONTEXT_FAMILIES: Final = {
    768: ModelFamily.SD15,
    1024: ModelFamily.SD2,
    2048: ModelFamily.SDXL,
    1280: ModelFamily.SDXL_REFINER,
}
# Markers of architectures that share names with the supported ones but need pipelines this server lacks.
_LOOKALIKES: Final = {
    "edm_mean": "a Playground v2.5 (EDM) checkpoint",
    "single_stream_modulation.lin.weight": "a FLUX.2 checkpoint",
    "distilled_guidance_layer.in_proj.bias": "a Chroma checkpoint",
    "early_stream_modulations.image.lin.weight": "a FLUX.3 checkpoint",
}
_FLUX_IN_CHANNELS: Final = 64
_FLUX_FILL_IN_CHANNELS: Final = 384


@dataclass(frozen=True)
class CheckpointHeader:
    """Tensor shapes by name, and the free-form string metadata (`__metadata__`) of a safetensors file."""

    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, str] = field(default_factory=dict)

    def has_prefix(self, prefix: str) -> bool:
        return any(key.startswith(prefix) for key in self.shapes)


def read_safetensors_header(path: Path) -> CheckpointHeader:
    """The header of a .safetensors file; UnsupportedModelError when the file is not one."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if length < 2 or length > min(MAX_HEADER_BYTES, size - 8):
                raise UnsupportedModelError(f"{path.name}: not a safetensors file (bad header length {length})")
            raw = json.loads(handle.read(length).decode("utf-8"))
    except OSError as exc:
        raise UnsupportedModelError(f"{path.name}: cannot be read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UnsupportedModelError(f"{path.name}: not a safetensors file (the header is not JSON)") from None
    if not isinstance(raw, dict):
        raise UnsupportedModelError(f"{path.name}: not a safetensors file (the header is not a JSON object)")
    metadata = raw.pop("__metadata__", None)
    shapes: dict[str, tuple[int, ...]] = {}
    for name, entry in raw.items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(dim, int) for dim in shape):
            raise UnsupportedModelError(f"{path.name}: not a safetensors file (tensor {name!r} has no shape)")
        shapes[name] = tuple(shape)
    strings = {str(key): str(value) for key, value in metadata.items()} if isinstance(metadata, dict) else {}
    return CheckpointHeader(shapes, strings)


def detect_checkpoint(header: CheckpointHeader, name: str) -> FamilyInfo:
    """The family a checkpoint's keys show; UnsupportedModelError naming what the file holds instead."""
    for marker, what in _LOOKALIKES.items():
        if marker in header.shapes or UNET + marker in header.shapes:
            raise UnsupportedModelError(f"{name}: {what}; this server runs SD 1.x/2.x, SDXL, SD3 and FLUX.1")
    if header.has_prefix(UNET + "joint_blocks.") or header.has_prefix("joint_blocks."):
        return _sd3(header)
    if header.has_prefix(UNET + "double_blocks.") or header.has_prefix("double_blocks."):
        return _flux(header, name)
    if UNET_INPUT in header.shapes:
        return _ldm(header, name)
    raise UnsupportedModelError(f"{name}: {_describe(header)}")


def _ldm(header: CheckpointHeader, name: str) -> FamilyInfo:
    in_channels = header.shapes[UNET_INPUT][1]
    if in_channels not in (4, 9):
        raise UnsupportedModelError(
            f"{name}: the UNet takes {in_channels} input channels; this server runs text-to-image (4) and "
            "inpainting (9) checkpoints, not instruct-pix2pix (8) or upscalers (7)"
        )
    components = {"unet"} | ({"vae"} if any(header.has_prefix(prefix) for prefix in VAE_PREFIXES) else set())
    if header.has_prefix(SDXL_OPEN_CLIP_G):
        family, evidence = ModelFamily.SDXL, f"{SDXL_OPEN_CLIP_G}* (OpenCLIP bigG beside CLIP ViT-L)"
        components |= {"text_encoder_2"} | ({"text_encoder"} if header.has_prefix(SDXL_CLIP_L) else set())
    elif header.has_prefix(REFINER_OPEN_CLIP_G):
        family, evidence = ModelFamily.SDXL_REFINER, f"{REFINER_OPEN_CLIP_G}* (OpenCLIP bigG alone)"
        components.add("text_encoder_2")
    elif header.has_prefix(SD2_OPEN_CLIP):
        family, evidence = ModelFamily.SD2, f"{SD2_OPEN_CLIP}* (OpenCLIP ViT-H)"
        components.add("text_encoder")
    elif header.has_prefix(SD1_CLIP):
        family, evidence = ModelFamily.SD15, f"{SD1_CLIP}* (OpenAI CLIP ViT-L)"
        components.add("text_encoder")
    else:
        family, evidence = _unet_only_family(header, name)
    return FamilyInfo(
        family,
        _stated_prediction_type(header, family),
        inpainting=in_channels == 9,
        components=frozenset(components),
        evidence=evidence,
    )


def _unet_only_family(header: CheckpointHeader, name: str) -> tuple[ModelFamily, str]:
    """A file without text encoders: the width of the UNet's text cross-attention tells the family."""
    widths = {
        shape[1]
        for key, shape in header.shapes.items()
        if key.startswith(UNET) and key.endswith(".attn2.to_k.weight") and len(shape) == 2
    }
    if len(widths) == 1 and (width := min(widths)) in _UNET_CONTEXT_FAMILIES:
        return _UNET_CONTEXT_FAMILIES[width], f"a UNet with {width}-wide text cross-attention and no text encoder"
    raise UnsupportedModelError(
        f"{name}: an LDM UNet without text encoders whose cross-attention widths {sorted(widths)} match no "
        f"supported family ({', '.join(f'{w}: {f.value}' for w, f in _UNET_CONTEXT_FAMILIES.items())})"
    )


def _stated_prediction_type(header: CheckpointHeader, family: ModelFamily) -> PredictionType | None:
    """What the file says about its prediction type; SD 2.x files that say nothing stay unknown (None)."""
    # The "v_pred" marker tensor (ComfyUI's convention) and the ModelSpec metadata field are the two in use.
    if "v_pred" in header.shapes:
        return PredictionType.V_PREDICTION
    stated = header.metadata.get("modelspec.prediction_type", "").lower()
    if stated in {"v", "v_prediction", "v-prediction"}:
        return PredictionType.V_PREDICTION
    if stated in {"epsilon", "eps"}:
        return PredictionType.EPSILON
    return None if family is ModelFamily.SD2 else PredictionType.EPSILON


def _sd3(header: CheckpointHeader) -> FamilyInfo:
    components = {"transformer"} | _prefixed_components(header, SD3_TEXT_ENCODERS)
    if any(header.has_prefix(prefix) for prefix in VAE_PREFIXES):
        components.add("vae")
    return FamilyInfo(
        ModelFamily.SD3,
        PredictionType.FLOW_MATCH,
        components=frozenset(components),
        evidence="joint_blocks.* (MMDiT)",
    )


def _flux(header: CheckpointHeader, name: str) -> FamilyInfo:
    prefix = UNET if header.has_prefix(UNET + "double_blocks.") else ""
    image_in = header.shapes.get(prefix + "img_in.weight")
    in_channels = image_in[1] if image_in is not None and len(image_in) == 2 else None
    if in_channels not in (_FLUX_IN_CHANNELS, _FLUX_FILL_IN_CHANNELS):
        raise UnsupportedModelError(
            f"{name}: the Flux transformer takes {in_channels} input channels; this server runs FLUX.1 "
            f"text-to-image ({_FLUX_IN_CHANNELS}) and Fill ({_FLUX_FILL_IN_CHANNELS}) models, not Canny/Depth"
        )
    components = {"transformer"} | _prefixed_components(header, FLUX_TEXT_ENCODERS)
    if any(header.has_prefix(vae) for vae in VAE_PREFIXES):
        components.add("vae")
    guidance = header.has_prefix(prefix + "guidance_in.")
    return FamilyInfo(
        ModelFamily.FLUX,
        PredictionType.FLOW_MATCH,
        inpainting=in_channels == _FLUX_FILL_IN_CHANNELS,
        few_step=None if guidance else FewStep.SCHNELL,
        components=frozenset(components),
        evidence=f"{prefix}double_blocks.* (FLUX.1 {'with' if guidance else 'without'} a guidance embedder)",
    )


def _prefixed_components(header: CheckpointHeader, prefixes: dict[str, str]) -> set[str]:
    return {component for prefix, component in prefixes.items() if header.has_prefix(prefix)}


# Layouts of files that are not whole models, for a message that says what to do instead.
_PARTS: Final = (
    (("lora_unet_", "lora_te", "lora_transformer_"), ("lora_down.", "lora_A.", "lora_B."), "a LoRA"),
    (("control_model.", "controlnet_cond_embedding.", "input_hint_block."), (), "a ControlNet"),
    (("emb_params", "string_to_param", "clip_l", "clip_g"), (), "a textual-inversion embedding"),
    (("encoder.down.", "encoder.down_blocks."), (), "a VAE"),
    (("down_blocks.", "transformer_blocks.", "conv_in."), (), "a diffusers-format component, not a whole model"),
)


def _describe(header: CheckpointHeader) -> str:
    """What the file seems to hold, or its most common top-level key prefixes."""
    for starts, contains, what in _PARTS:
        if any(key.startswith(starts) or any(part in key for part in contains) for key in header.shapes):
            return f"this looks like {what}, not a Stable Diffusion, SD3 or Flux checkpoint"
    if not header.shapes:
        return "the checkpoint holds no tensors"
    counts = Counter(".".join(key.split(".")[:2]) for key in header.shapes)
    common = ", ".join(f"{prefix}.* ({count})" for prefix, count in counts.most_common(5))
    return (
        f"no Stable Diffusion 1.x/2.x/XL, SD3 or FLUX.1 layout (expected {UNET_INPUT}, joint_blocks.* or "
        f"double_blocks.*); its top-level key prefixes are {common}"
    )
