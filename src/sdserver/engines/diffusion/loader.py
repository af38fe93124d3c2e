"""Loads a model of any supported family from disk, offline, into one set of weights shared by the pipelines of
every job kind the family serves (text2img, img2img, inpaint)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

import torch

from sdserver.catalog.families import FamilyInfo, ModelFamily, PredictionType
from sdserver.catalog.families.capabilities import FamilyCapabilities, model_capabilities
from sdserver.catalog.layout import ModelFormat, ModelSource
from sdserver.engines.base import JobFailed
from sdserver.engines.diffusion.acceleration import compile_denoiser, use_channels_last, warm_up
from sdserver.engines.diffusion.addons import AddonCache
from sdserver.engines.diffusion.families import (
    INPAINT_IN_CHANNELS,
    SD1_TEXT_KEY,
    UNET_INPUT_KEY,
    checkpoint_shapes,
    pipeline_classes,
)
from sdserver.engines.precision import Placement
from sdserver.errors import JobErrorCode
from sdserver.jobs import JobKind

__all__ = [
    "INPAINT_IN_CHANNELS",
    "SD1_TEXT_KEY",
    "UNET_INPUT_KEY",
    "LoadedModel",
    "bundled_config_dir",
    "checkpoint_shapes",
    "load_model",
]

# The safety checker is the server's own (issue 4), never the one a model folder may carry.
_NO_SAFETY_CHECKER: Final[dict[str, Any]] = {
    "safety_checker": None,
    "feature_extractor": None,
    "requires_safety_checker": False,
}
# SDXL would otherwise stamp an invisible watermark on every image whenever the `invisible-watermark` package is
# installed; the hosted API returns clean images.
_NO_WATERMARK: Final[dict[str, Any]] = {"add_watermarker": False}
LOAD_OPTIONS: Final[dict[ModelFamily, dict[str, Any]]] = {
    ModelFamily.SD15: _NO_SAFETY_CHECKER,
    ModelFamily.SD2: _NO_SAFETY_CHECKER,
    ModelFamily.SDXL: _NO_WATERMARK,
    ModelFamily.SDXL_REFINER: _NO_WATERMARK,
    ModelFamily.SD3: {},
    ModelFamily.FLUX: {},
}
# Schedulers whose prediction type the model's files decide (flow models always predict a flow).
_EPSILON_OR_V: Final = frozenset({PredictionType.EPSILON, PredictionType.V_PREDICTION})


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
    info: FamilyInfo
    capabilities: FamilyCapabilities
    # Bytes of every component's parameters and buffers (text encoders and T5 included), as loaded.
    weight_bytes: int = 0
    # LoRA adapters and VAEs kept loaded for this model between jobs (job_addons puts them on and takes them off).
    addons: AddonCache = field(default_factory=AddonCache)

    @property
    def family(self) -> ModelFamily:
        return self.info.family


def bundled_config_dir() -> Path:
    """The SD 1.5 diffusers-format configs and CLIP tokenizer shipped in this package (single-file loading)."""
    return Path(str(resources.files("sdserver.engines.diffusion") / "configs" / "sd15"))


def load_model(
    source: ModelSource, placement: Placement, info: FamilyInfo, *, compile_backend: str = ""
) -> LoadedModel:
    """Load weights once, as the family's own pipeline, and build the other kinds' pipelines around them.
    `info` is what `families.detect_model` found; `compile_backend`: torch.compile the denoiser with it and warm it
    up (empty: not compiled). Raises JobFailed for files that do not load."""
    classes = pipeline_classes(info)
    loading_class = next(iter(classes.values()))
    try:
        if source.format is ModelFormat.DIFFUSERS:
            base = loading_class.from_pretrained(
                source.path, dtype=placement.dtype, local_files_only=True, **LOAD_OPTIONS[info.family]
            )
        else:
            base = _load_single_file(loading_class, source, placement, info)
    except (torch.OutOfMemoryError, torch.AcceleratorError):
        raise  # device trouble, not a bad file: the engine maps it
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError) as exc:
        # Corrupt or mismatched files: the job cannot run, the worker is fine.
        raise JobFailed(JobErrorCode.MODEL_LOAD_FAILED, f"Model {source.model_id} could not be loaded: {exc}") from exc
    if placement.device != "cpu":
        base.to(placement.device)
    use_channels_last(base, placement.device)
    _settle_prediction_type(base, info)
    for component in base.components.values():
        if isinstance(component, torch.nn.Module):
            # Single-file loading can leave text encoders in training mode (T5's dropout would make every run differ).
            component.eval()
    options = LOAD_OPTIONS[info.family]
    # Compiled before the siblings are built from `base`, so every pipeline shares the compiled denoiser.
    compiled = compile_denoiser(base, compile_backend) if compile_backend else []
    pipelines = {
        kind: base if type(base) is cls else sibling_pipeline(cls, base, **options) for kind, cls in classes.items()
    }
    for pipeline in pipelines.values():
        pipeline.set_progress_bar_config(disable=True)
    capabilities = model_capabilities(info)
    if compiled and JobKind.TEXT2IMG in pipelines:
        warm_up(pipelines[JobKind.TEXT2IMG], capabilities.default_size)
    return LoadedModel(
        model_id=source.model_id,
        fingerprint=source.fingerprint(),
        placement=placement,
        pipelines=pipelines,
        scheduler_config=base.scheduler.config,
        text_layers=_text_layers(base),
        info=info,
        capabilities=capabilities,
        weight_bytes=module_bytes(base),
    )


def sibling_pipeline(cls: Any, base: Any, **overrides: Any) -> Any:
    """A `cls` pipeline on `base`'s very modules, with base's config flags (aesthetic score, zeroed empty prompt...)
    unless `overrides` says otherwise. Not `from_pipe`: that casts every module to one dtype, which undoes the
    float32 layers transformers keeps in T5 at half precision (T5 overflows to NaN in fp16 without them)."""
    accepted = inspect.signature(cls.__init__).parameters
    values = {name: part for name, part in base.components.items() if name in accepted}
    values |= {name: value for name, value in base.config.items() if name in accepted and name not in values}
    return cls(**(values | {name: value for name, value in overrides.items() if name in accepted}))


def _load_single_file(loading_class: Any, source: ModelSource, placement: Placement, info: FamilyInfo) -> Any:
    extra: dict[str, Any] = dict(LOAD_OPTIONS[info.family])
    config_dir = source.config_dir
    if config_dir is None:
        # Only SD 1.x fits the bundled configs (families.detect_model checked); an inpainting UNet takes 9 channels.
        config_dir = bundled_config_dir()
        if info.inpainting:
            extra["num_in_channels"] = INPAINT_IN_CHANNELS
    if info.family is ModelFamily.SD3 and "text_encoder_3" not in info.components:
        # SD3 files without T5 run without it (diffusers pads the T5 part of the prompt embedding with zeros).
        extra.update(text_encoder_3=None, tokenizer_3=None)
    return loading_class.from_single_file(
        str(source.path), config=str(config_dir), local_files_only=True, dtype=placement.dtype, **extra
    )


def _settle_prediction_type(base: Any, info: FamilyInfo) -> None:
    """The prediction type the files stated (checkpoint marker or config folder) wins over the scheduler config
    the model was loaded with: an SD 2.x v-prediction model sampled as epsilon makes grey mush."""
    wanted = info.prediction_type
    if wanted not in _EPSILON_OR_V or base.scheduler.config.get("prediction_type") == wanted:
        return
    assert wanted is not None
    base.scheduler = type(base.scheduler).from_config(base.scheduler.config, prediction_type=wanted.value)


def _text_layers(base: Any) -> int:
    # The SDXL refiner has only its second (OpenCLIP bigG) text encoder.
    encoder = getattr(base, "text_encoder", None) or getattr(base, "text_encoder_2", None)
    return int(encoder.config.num_hidden_layers) if encoder is not None else 0


def module_bytes(pipeline: Any) -> int:
    """Bytes of the parameters and buffers of every torch module of a pipeline (UNet or transformer, VAE, all
    text encoders); modules shared between components count once."""
    seen: set[int] = set()
    total = 0
    for component in pipeline.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        for tensor in (*component.parameters(), *component.buffers()):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total
