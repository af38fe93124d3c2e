"""Request and reply schemas of AUTOMATIC1111's /sdapi/v1 dialect, and the rules that turn a request into native
generation fields (A1111 sampler and scheduler names, batches, override_settings)."""

from __future__ import annotations

import re
from typing import Any, Final

from pydantic import BaseModel, Field

from sdserver.api.fields import Flag, LenientFloat, LenientInt, OptionalText
from sdserver.api.schemas import LenientRequest
from sdserver.catalog.schedulers import A1111_ALIASES
from sdserver.errors import ValidationError

MAX_IMAGES = 4
KARRAS = "karras"
# `name [hash]`, as A1111 titles checkpoints; the hash is dropped.
_TITLE_HASH = re.compile(r"\s*\[[0-9a-fA-F]*\]\s*$")
# A1111's LoRA syntax in the prompt: `<lora:name>` or `<lora:name:weight>`.
_LORA_TAG = re.compile(r"<lora:([^:<>]+)(?::([^:<>]*))?>", re.IGNORECASE)
_CHECKPOINT: Final = "sd_model_checkpoint"
_CLIP_SKIP: Final = "CLIP_stop_at_last_layers"


class Txt2ImgRequest(LenientRequest):
    prompt: OptionalText = Field(default=None, description="What to draw.")
    negative_prompt: OptionalText = Field(default=None, description="What to avoid.")
    width: LenientInt = Field(default=None, description="Output width (default: the model family's).")
    height: LenientInt = Field(default=None, description="Output height (default: the model family's).")
    steps: LenientInt = Field(default=None, description="Sampling steps, 1–50.")
    cfg_scale: LenientFloat = Field(default=None, description="Prompt guidance (guidance_scale).")
    seed: LenientInt = Field(default=None, description="Seed; -1 for a random one.")
    sampler_name: OptionalText = Field(default=None, description="An A1111 sampler name (GET samplers).")
    sampler_index: OptionalText = Field(default=None, description="Older spelling of sampler_name.")
    scheduler: OptionalText = Field(default=None, description="automatic, or Karras (Karras sigmas).")
    batch_size: LenientInt = Field(default=None, description="Images per batch; batch_size × n_iter ≤ 4.")
    n_iter: LenientInt = Field(default=None, description="Batches; batch_size × n_iter ≤ 4.")
    send_images: Flag = Field(default=None, description="false: the reply carries no images (default true).")
    restore_faces: Flag = Field(default=None, description="Restore faces (GFPGAN/CodeFormer; docs/face-enhance.md).")
    enable_hr: Flag = Field(default=None, description="txt2img: highres fix (draw at half size, refine at full).")
    override_settings: dict[str, Any] | None = Field(
        default=None, description="sd_model_checkpoint (a model id) and CLIP_stop_at_last_layers apply."
    )


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] | None = Field(default=None, description="The start image (base64); the first is used.")
    mask: OptionalText = Field(default=None, description="Inpainting mask (base64): white is repainted.")
    inpainting_mask_invert: LenientInt = Field(default=None, description="1: black is repainted.")
    denoising_strength: LenientFloat = Field(default=None, description="How much to change the image, 0–1.")


class ExtraSingleImageRequest(LenientRequest):
    image: OptionalText = Field(default=None, description="The image (base64).")
    resize_mode: LenientInt = Field(default=None, description="0 only: scale by upscaling_resize.")
    upscaling_resize: LenientFloat = Field(default=None, description="Scale factor, 1–4 (default 2).")
    upscaler_1: OptionalText = Field(default=None, description="An upscaler id here; other names: the default.")
    gfpgan_visibility: LenientFloat = Field(default=None, description="> 0: face restoration.")
    codeformer_visibility: LenientFloat = Field(default=None, description="> 0: face restoration.")


class PngInfoRequest(LenientRequest):
    image: OptionalText = Field(default=None, description="A PNG (base64) carrying A1111 `parameters`.")


class ImagesReply(BaseModel):
    images: list[str]
    parameters: dict[str, Any]
    info: str


class ExtraSingleImageReply(BaseModel):
    html_info: str
    image: str


class ProgressState(BaseModel):
    skipped: bool
    interrupted: bool
    job: str
    job_count: int
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int


class ProgressReply(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None
    textinfo: str | None


class InterruptReply(BaseModel):
    interrupted: list[int]


class OptionsReply(BaseModel):
    sd_model_checkpoint: str | None
    sd_checkpoint_hash: None
    sd_vae: str
    CLIP_stop_at_last_layers: int
    samples_format: str


class EmbeddingsReply(BaseModel):
    loaded: dict[str, dict[str, Any]]
    skipped: dict[str, Any]


class ScriptsReply(BaseModel):
    txt2img: list[str]
    img2img: list[str]


class PngInfoReply(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


def image_total(batch_size: int | None, n_iter: int | None) -> int:
    total = (batch_size or 1) * (n_iter or 1)
    if not 1 <= total <= MAX_IMAGES:
        shown = f"batch_size={batch_size} n_iter={n_iter}"
        raise ValidationError.for_field("batch_size", f"batch_size × n_iter must be 1–{MAX_IMAGES}", shown)
    return total


def checkpoint_id(title: str) -> str:
    """The model id in an A1111 checkpoint title (`name [hash]`)."""
    return _TITLE_HASH.sub("", title).strip()


def sampler_for(sampler: str | None, scheduler: str | None) -> dict[str, Any]:
    """Native scheduler fields of an A1111 sampler and scheduler; A1111 1.9's separate `Karras` scheduler picks the
    sampler's Karras variant."""
    fields: dict[str, Any] = {}
    karras = scheduler is not None and scheduler.strip().lower() == KARRAS
    if sampler:
        karras_name = f"{sampler} Karras"
        fields["scheduler"] = karras_name if karras and karras_name in A1111_ALIASES else sampler
    if karras:
        fields["use_karras_sigmas"] = "yes"
    return fields


def lora_tags(prompt: str) -> tuple[str, list[str], list[str]]:
    """The prompt without its `<lora:name:weight>` tags, and the LoRA ids and weights they named (default 1)."""
    names = [match.group(1).strip() for match in _LORA_TAG.finditer(prompt)]
    weights = [(match.group(2) or "1").strip() or "1" for match in _LORA_TAG.finditer(prompt)]
    cleaned = " ".join(_LORA_TAG.sub(" ", prompt).split())
    return cleaned, names, weights


def native_fields(request: Txt2ImgRequest) -> dict[str, Any]:
    """The native generation fields of an A1111 txt2img or img2img request (images excluded)."""
    if request.prompt is None:
        raise ValidationError.for_field("prompt", "is required", None)
    prompt, loras, weights = lora_tags(request.prompt)
    native: dict[str, Any] = {
        "prompt": prompt or request.prompt,
        "lora_model": loras or None,
        "lora_strength": weights or None,
        "negative_prompt": request.negative_prompt,
        "width": request.width,
        "height": request.height,
        "num_inference_steps": request.steps,
        "guidance_scale": request.cfg_scale,
        "seed": request.seed,
        "samples": image_total(request.batch_size, request.n_iter),
        # A1111 clients expect their prompt as written.
        "enhance_prompt": "no",
        "face_enhance": "yes" if request.restore_faces else None,
        "highres_fix": "yes" if request.enable_hr else None,
    }
    native |= sampler_for(request.sampler_name or request.sampler_index, request.scheduler)
    overrides = request.override_settings or {}
    checkpoint = overrides.get(_CHECKPOINT)
    if isinstance(checkpoint, str) and checkpoint.strip():
        native["model_id"] = checkpoint_id(checkpoint)
    if overrides.get(_CLIP_SKIP) is not None:
        native["clip_skip"] = overrides[_CLIP_SKIP]
    return {name: value for name, value in native.items() if value is not None}
