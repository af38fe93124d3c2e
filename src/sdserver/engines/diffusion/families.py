"""The family of a model on disk as the engine needs it before loading (detect first, evict later), and the
diffusers pipeline classes each family runs its job kinds with."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Final

import torch
from diffusers import (
    FluxFillPipeline,
    FluxImg2ImgPipeline,
    FluxInpaintPipeline,
    FluxPipeline,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3InpaintPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from safetensors import SafetensorError, safe_open

from sdserver.catalog.families import (
    FamilyInfo,
    ModelFamily,
    PredictionType,
    UnsupportedModelError,
    detect_source_family,
)
from sdserver.catalog.families.capabilities import FamilyCapabilities
from sdserver.catalog.families.folders import detect_folder
from sdserver.catalog.layout import MODEL_INDEX, ModelFormat, ModelSource
from sdserver.engines.base import JobFailed
from sdserver.errors import JobErrorCode
from sdserver.jobs import JobKind

# Pipeline classes by family and kind. The first one listed loads the weights; the others share its modules.
PIPELINE_CLASSES: Final[dict[ModelFamily, dict[JobKind, Any]]] = {
    ModelFamily.SD15: {
        JobKind.TEXT2IMG: StableDiffusionPipeline,
        JobKind.IMG2IMG: StableDiffusionImg2ImgPipeline,
        JobKind.INPAINT: StableDiffusionInpaintPipeline,
    },
    ModelFamily.SD2: {
        JobKind.TEXT2IMG: StableDiffusionPipeline,
        JobKind.IMG2IMG: StableDiffusionImg2ImgPipeline,
        JobKind.INPAINT: StableDiffusionInpaintPipeline,
    },
    ModelFamily.SDXL: {
        JobKind.TEXT2IMG: StableDiffusionXLPipeline,
        JobKind.IMG2IMG: StableDiffusionXLImg2ImgPipeline,
        JobKind.INPAINT: StableDiffusionXLInpaintPipeline,
    },
    # The refiner has no text-to-image form: it conditions on an aesthetic score, not on a target size.
    ModelFamily.SDXL_REFINER: {
        JobKind.IMG2IMG: StableDiffusionXLImg2ImgPipeline,
        JobKind.INPAINT: StableDiffusionXLInpaintPipeline,
    },
    ModelFamily.SD3: {
        JobKind.TEXT2IMG: StableDiffusion3Pipeline,
        JobKind.IMG2IMG: StableDiffusion3Img2ImgPipeline,
        JobKind.INPAINT: StableDiffusion3InpaintPipeline,
    },
    ModelFamily.FLUX: {
        JobKind.TEXT2IMG: FluxPipeline,
        JobKind.IMG2IMG: FluxImg2ImgPipeline,
        JobKind.INPAINT: FluxInpaintPipeline,
    },
}
# FLUX.1 Fill (384 input channels) inpaints only, with a pipeline of its own.
FLUX_FILL_CLASSES: Final[dict[JobKind, Any]] = {JobKind.INPAINT: FluxFillPipeline}
UNET_FAMILIES: Final = frozenset({ModelFamily.SD15, ModelFamily.SD2, ModelFamily.SDXL, ModelFamily.SDXL_REFINER})
# The SD 1.x check of a checkpoint loaded with the bundled configs (the only ones this package ships).
SD1_TEXT_KEY: Final = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"
UNET_INPUT_KEY: Final = "model.diffusion_model.input_blocks.0.0.weight"
SD1_CONTEXT_DIM: Final = 768
INPAINT_IN_CHANNELS: Final = 9


def pipeline_classes(info: FamilyInfo) -> dict[JobKind, Any]:
    """The kinds this model serves and their classes, the loading one first."""
    if info.family is ModelFamily.FLUX and info.inpainting:
        return FLUX_FILL_CLASSES
    return PIPELINE_CLASSES[info.family]


def detect_model(source: ModelSource) -> FamilyInfo:
    """What `source` holds, read from configs and headers without loading a weight; JobFailed(UNSUPPORTED_MODEL)
    naming what was found when no pipeline here can run it."""
    _check_readable(source)
    try:
        info = detect_source_family(source)
        if info is None:
            # A pickled checkpoint: its config folder says what it is, else only SD 1.x fits the bundled configs.
            info = _pickled_family(source)
    except UnsupportedModelError as exc:
        raise JobFailed(JobErrorCode.UNSUPPORTED_MODEL, f"Model {source.model_id}: {exc}") from None
    missing = info.missing_components
    if source.format is ModelFormat.DIFFUSERS and missing:
        raise JobFailed(
            JobErrorCode.UNSUPPORTED_MODEL,
            f"Model {source.model_id} is a {info.family.value} folder ({info.evidence}) without "
            f"{', '.join(sorted(missing))}",
        )
    if source.format is ModelFormat.SINGLE_FILE and missing and source.path.suffix == ".safetensors":
        raise JobFailed(
            JobErrorCode.MODEL_WEIGHTS_MISSING,
            f"Checkpoint {source.model_id} is a {info.family.value} model ({info.evidence}) without weights for "
            f"{', '.join(sorted(missing))}; use a checkpoint that includes them, or a diffusers folder",
        )
    if source.format is ModelFormat.SINGLE_FILE and source.config_dir is None:
        return _bundled_sd1(source, info)
    return info


def _check_readable(source: ModelSource) -> None:
    """A checkpoint that cannot be opened at all is a corrupt file (the load failed), not an unsupported model."""
    if source.format is not ModelFormat.SINGLE_FILE:
        return
    try:
        if source.path.suffix == ".safetensors":
            with safe_open(str(source.path), framework="pt") as handle:
                handle.keys()
        elif source.config_dir is None:
            checkpoint_shapes(source.path, (UNET_INPUT_KEY,))
    except (OSError, ValueError, RuntimeError, SafetensorError, pickle.UnpicklingError, EOFError) as exc:
        raise JobFailed(JobErrorCode.MODEL_LOAD_FAILED, f"Model {source.model_id} could not be loaded: {exc}") from exc


def _pickled_family(source: ModelSource) -> FamilyInfo:
    if source.config_dir is not None and (source.config_dir / MODEL_INDEX).is_file():
        return detect_folder(source.config_dir)
    return FamilyInfo(ModelFamily.SD15, PredictionType.EPSILON, components=frozenset({"unet", "vae", "text_encoder"}))


def _bundled_sd1(source: ModelSource, info: FamilyInfo) -> FamilyInfo:
    """A checkpoint without a config folder loads with the bundled SD 1.5 configs: only an SD 1.x file fits them."""
    shapes = checkpoint_shapes(source.path, (SD1_TEXT_KEY, UNET_INPUT_KEY))
    text, unet = shapes.get(SD1_TEXT_KEY), shapes.get(UNET_INPUT_KEY)
    if info.family is not ModelFamily.SD15 or text is None or unet is None or text[-1] != SD1_CONTEXT_DIM:
        found = f"a {info.family.value} model ({info.evidence})" if info.evidence else "not a Stable Diffusion 1.x file"
        raise JobFailed(
            JobErrorCode.UNSUPPORTED_MODEL,
            f"Checkpoint {source.model_id} is {found} that does not fit the bundled Stable Diffusion 1.5 configs; "
            f"other models need a diffusers folder (or a {source.model_id}.config folder beside the checkpoint)",
        )
    return FamilyInfo(
        ModelFamily.SD15,
        info.prediction_type or PredictionType.EPSILON,
        inpainting=unet[1] == INPAINT_IN_CHANNELS,
        few_step=info.few_step,
        components=info.components,
        evidence=info.evidence,
    )


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


def check_kind(model_id: str, info: FamilyInfo, capabilities: FamilyCapabilities, kind: JobKind) -> None:
    """JobFailed(UNSUPPORTED_MODEL) when this model cannot serve `kind` (checked before loading it)."""
    if kind in capabilities.kinds:
        return
    if info.inpainting:
        raise JobFailed(JobErrorCode.UNSUPPORTED_MODEL, f"Model {model_id} is an inpainting model; use it with inpaint")
    if kind is JobKind.CONTROLNET:
        raise JobFailed(
            JobErrorCode.UNSUPPORTED_MODEL,
            f"Model {model_id} is a {info.family.value} model; ControlNet runs with sd15, sd2 and sdxl models",
        )
    kinds = ", ".join(sorted(kind.value for kind in capabilities.kinds))
    raise JobFailed(
        JobErrorCode.UNSUPPORTED_MODEL,
        f"Model {model_id} is a {info.family.value} model, which serves {kinds}, not {kind.value}",
    )
