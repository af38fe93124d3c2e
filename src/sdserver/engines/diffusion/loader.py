"""Loads a model from disk, offline, into one set of weights shared by the text2img, img2img and inpaint pipelines."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

import torch
from diffusers import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)
from safetensors import safe_open

from sdserver.catalog.layout import MODEL_INDEX, ModelFormat, ModelSource
from sdserver.engines.base import JobFailed
from sdserver.engines.diffusion.addons import AddonCache
from sdserver.engines.precision import Placement
from sdserver.errors import JobErrorCode
from sdserver.jobs import JobKind

# Pipeline classes whose folders hold the SD 1.x/2.x component set the three pipelines share.
SUPPORTED_PIPELINES: Final = frozenset(
    {"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"}
)
# Keys that mark an SD 1.x original-layout checkpoint (CLIP ViT-L text encoder, LDM UNet).
SD1_TEXT_KEY: Final = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"
UNET_INPUT_KEY: Final = "model.diffusion_model.input_blocks.0.0.weight"
SD1_CONTEXT_DIM: Final = 768
INPAINT_IN_CHANNELS: Final = 9


@dataclass
class LoadedModel:
    """One model's weights on the device, with a pipeline per job kind built on the very same modules."""

    model_id: str
    fingerprint: int
    placement: Placement
    pipelines: dict[JobKind, Any]
    # The scheduler the model ships with: its config seeds every job's scheduler (the class is the job's choice).
    scheduler_config: Any
    text_layers: int
    # LoRA adapters and VAEs kept loaded for this model between jobs (job_addons puts them on and takes them off).
    addons: AddonCache = field(default_factory=AddonCache)


def bundled_config_dir() -> Path:
    """The SD 1.5 diffusers-format configs and CLIP tokenizer shipped in this package (single-file loading)."""
    return Path(str(resources.files("sdserver.engines.diffusion") / "configs" / "sd15"))


def load_model(source: ModelSource, placement: Placement) -> LoadedModel:
    """Load weights once and build the three pipelines around them. Raises JobFailed for unusable models."""
    try:
        if source.format is ModelFormat.DIFFUSERS:
            base = _load_folder(source, placement)
        else:
            base = _load_single_file(source, placement)
    except (torch.OutOfMemoryError, torch.AcceleratorError):
        raise  # device trouble, not a bad file: the engine maps it
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        # Corrupt or mismatched files: the job cannot run, the worker is fine.
        raise JobFailed(JobErrorCode.MODEL_LOAD_FAILED, f"Model {source.model_id} could not be loaded: {exc}") from exc
    if placement.device != "cpu":
        base.to(placement.device)
    return _share_components(source, placement, base)


def _load_folder(source: ModelSource, placement: Placement) -> Any:
    index = json.loads((source.path / MODEL_INDEX).read_text(encoding="utf-8"))
    pipeline_class = index.get("_class_name")
    if pipeline_class not in SUPPORTED_PIPELINES:
        raise JobFailed(
            JobErrorCode.UNSUPPORTED_MODEL,
            f"Model {source.model_id} is a {pipeline_class}; this server runs Stable Diffusion 1.x/2.x models",
        )
    # The safety checker is the server's own (issue 4), never the one a model folder may carry.
    return StableDiffusionPipeline.from_pretrained(  # type: ignore[no-untyped-call]
        source.path,
        dtype=placement.dtype,
        local_files_only=True,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _load_single_file(source: ModelSource, placement: Placement) -> Any:
    extra: dict[str, Any] = {}
    config_dir = source.config_dir
    if config_dir is None:
        # Without a config folder of its own, only SD 1.x fits the bundled configs.
        in_channels = _sd1_unet_in_channels(source)
        config_dir = bundled_config_dir()
        if in_channels != 4:
            extra["num_in_channels"] = in_channels
    return StableDiffusionPipeline.from_single_file(
        str(source.path),
        config=str(config_dir),
        local_files_only=True,
        dtype=placement.dtype,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        **extra,
    )


def _sd1_unet_in_channels(source: ModelSource) -> int:
    """The UNet's input channels (4, or 9 for inpainting checkpoints); JobFailed unless the file is SD 1.x."""
    shapes = checkpoint_shapes(source.path, (SD1_TEXT_KEY, UNET_INPUT_KEY))
    text, unet = shapes.get(SD1_TEXT_KEY), shapes.get(UNET_INPUT_KEY)
    if text is None or unet is None or text[-1] != SD1_CONTEXT_DIM:
        raise JobFailed(
            JobErrorCode.UNSUPPORTED_MODEL,
            f"Checkpoint {source.model_id} is not a Stable Diffusion 1.x checkpoint; other architectures need a "
            f"diffusers folder (or a {source.model_id}.config folder beside the checkpoint)",
        )
    return unet[1]


def checkpoint_shapes(path: Path, keys: tuple[str, ...]) -> dict[str, list[int]]:
    """Shapes of some tensors of a checkpoint, reading only what is needed (header only for safetensors)."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            present = set(handle.keys())
            return {key: list(handle.get_slice(key).get_shape()) for key in keys if key in present}
    # .ckpt is a pickle: weights_only refuses code execution; mmap avoids reading every tensor.
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    return {key: list(state[key].shape) for key in keys if key in state}


def _share_components(source: ModelSource, placement: Placement, base: Any) -> LoadedModel:
    parts = {
        "vae": base.vae,
        "text_encoder": base.text_encoder,
        "tokenizer": base.tokenizer,
        "unet": base.unet,
        "scheduler": base.scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }
    pipelines: dict[JobKind, Any] = {
        JobKind.TEXT2IMG: base,
        JobKind.IMG2IMG: StableDiffusionImg2ImgPipeline(**parts),  # type: ignore[no-untyped-call]
        JobKind.INPAINT: StableDiffusionInpaintPipeline(**parts),  # type: ignore[no-untyped-call]
    }
    for pipeline in pipelines.values():
        pipeline.set_progress_bar_config(disable=True)
    return LoadedModel(
        model_id=source.model_id,
        fingerprint=source.fingerprint(),
        placement=placement,
        pipelines=pipelines,
        scheduler_config=base.scheduler.config,
        text_layers=int(base.text_encoder.config.num_hidden_layers),
    )


def unet_in_channels(model: LoadedModel) -> int:
    return int(model.pipelines[JobKind.INPAINT].unet.config.in_channels)
