"""Which model family a diffusers folder or single-file checkpoint holds, from configs and safetensors headers only
(torch-free: the API and the registry decide before a worker loads a weight)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from sdserver.catalog.families.checkpoints import CheckpointHeader, detect_checkpoint, read_safetensors_header
from sdserver.catalog.families.folders import MODEL_INDEX, SUPPORTED_PIPELINES, detect_folder, scheduler_hints
from sdserver.catalog.families.kinds import (
    REQUIRED_COMPONENTS,
    FamilyInfo,
    FewStep,
    ModelFamily,
    PredictionType,
)
from sdserver.catalog.layout import ModelFormat, ModelSource
from sdserver.errors import UnsupportedModelError

__all__ = [
    "FLOW_FAMILIES",
    "PICKLE_SUFFIXES",
    "REQUIRED_COMPONENTS",
    "SUPPORTED_PIPELINES",
    "CheckpointHeader",
    "FamilyInfo",
    "FewStep",
    "ModelFamily",
    "PredictionType",
    "UnsupportedModelError",
    "detect_family",
    "detect_source_family",
    "read_safetensors_header",
]

# Pickled checkpoints: their tensor names can only be read by unpickling, which only a worker may do.
PICKLE_SUFFIXES: Final = (".ckpt", ".pt", ".pth", ".bin")
FLOW_FAMILIES: Final = frozenset({ModelFamily.SD3, ModelFamily.FLUX})


def detect_family(path: Path, *, config_dir: Path | None = None) -> FamilyInfo | None:
    """The family of a diffusers folder or a `.safetensors` checkpoint, without loading weights.

    `config_dir` is the diffusers config folder a checkpoint loads with (`<id>.config/`): its scheduler says the
    prediction type and whether the model is an LCM, which a checkpoint's keys cannot. Returns None for pickled
    checkpoints (`.ckpt`), which the worker must open to tell. Raises UnsupportedModelError, naming what it found,
    for anything else it cannot run.
    """
    if path.is_dir():
        if not (path / MODEL_INDEX).is_file():
            raise UnsupportedModelError(f"{path.name}: a folder without {MODEL_INDEX} is not a diffusers model")
        return detect_folder(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return None
    if suffix != ".safetensors":
        raise UnsupportedModelError(f"{path.name}: not a diffusers folder, a .safetensors or a .ckpt checkpoint")
    info = detect_checkpoint(read_safetensors_header(path), path.name)
    if config_dir is None or info.family in FLOW_FAMILIES:
        return info
    prediction_type, few_step = scheduler_hints(config_dir)
    return FamilyInfo(
        info.family,
        prediction_type or info.prediction_type,
        inpainting=info.inpainting,
        few_step=few_step or info.few_step,
        components=info.components,
        evidence=info.evidence,
    )


def detect_source_family(source: ModelSource) -> FamilyInfo | None:
    """`detect_family` for a model found on disk (its checkpoint's config folder included)."""
    config_dir = source.config_dir if source.format is ModelFormat.SINGLE_FILE else None
    return detect_family(source.path, config_dir=config_dir)
