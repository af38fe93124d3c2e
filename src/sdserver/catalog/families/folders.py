"""Family of a diffusers folder, from model_index.json and the component configs beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from sdserver.catalog.families.kinds import FamilyInfo, FewStep, ModelFamily, PredictionType
from sdserver.errors import UnsupportedModelError

MODEL_INDEX: Final = "model_index.json"
# SD 1.x and 2.x share these classes; the text encoder and the UNet tell them apart.
_SD_PIPELINES: Final = frozenset(
    {
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionInpaintPipeline",
        "LatentConsistencyModelPipeline",
        "LatentConsistencyModelImg2ImgPipeline",
    }
)
_PIPELINE_FAMILIES: Final[dict[str, ModelFamily]] = {
    "StableDiffusionXLPipeline": ModelFamily.SDXL,
    "StableDiffusionXLImg2ImgPipeline": ModelFamily.SDXL,
    "StableDiffusionXLInpaintPipeline": ModelFamily.SDXL,
    "StableDiffusion3Pipeline": ModelFamily.SD3,
    "StableDiffusion3Img2ImgPipeline": ModelFamily.SD3,
    "StableDiffusion3InpaintPipeline": ModelFamily.SD3,
    "FluxPipeline": ModelFamily.FLUX,
    "FluxImg2ImgPipeline": ModelFamily.FLUX,
    "FluxInpaintPipeline": ModelFamily.FLUX,
    "FluxFillPipeline": ModelFamily.FLUX,
}
SUPPORTED_PIPELINES: Final = frozenset(_SD_PIPELINES | _PIPELINE_FAMILIES.keys())
WEIGHT_COMPONENTS: Final = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
# Context widths of the real text encoders: OpenAI CLIP ViT-L (SD 1.x) and OpenCLIP ViT-H (SD 2.x).
_SD1_CONTEXT: Final = 768
_SD2_CONTEXT: Final = 1024
# Transformer input widths of FLUX.1: 16 latent channels packed 2x2; Fill adds the masked image and the mask.
_FLUX_IN_CHANNELS: Final = 64
_FLUX_FILL_IN_CHANNELS: Final = 384


def detect_folder(folder: Path) -> FamilyInfo:
    """Raises UnsupportedModelError naming the pipeline class or the config value that is not supported."""
    index = _read_json(folder, MODEL_INDEX)
    pipeline = index.get("_class_name")
    if not isinstance(pipeline, str) or pipeline not in SUPPORTED_PIPELINES:
        raise UnsupportedModelError(
            f"{folder.name}: {MODEL_INDEX} names the pipeline {pipeline!r}; this server runs "
            f"{', '.join(sorted(SUPPORTED_PIPELINES))}"
        )
    components = frozenset(name for name in WEIGHT_COMPONENTS if _declared(index.get(name)))
    if pipeline in _SD_PIPELINES:
        return _sd_folder(folder, pipeline, components)
    family = _PIPELINE_FAMILIES[pipeline]
    if family is ModelFamily.SDXL:
        return _sdxl_folder(folder, pipeline, components)
    if family is ModelFamily.SD3:
        return FamilyInfo(
            ModelFamily.SD3,
            PredictionType.FLOW_MATCH,
            pipeline_class=pipeline,
            components=components,
            evidence=f"{MODEL_INDEX} names {pipeline}",
        )
    return _flux_folder(folder, pipeline, components)


def _sd_folder(folder: Path, pipeline: str, components: frozenset[str]) -> FamilyInfo:
    unet = _read_json(folder, "unet/config.json")
    context = unet.get("cross_attention_dim")
    if context in (_SD1_CONTEXT, _SD2_CONTEXT):
        family = ModelFamily.SD15 if context == _SD1_CONTEXT else ModelFamily.SD2
        evidence = f"{pipeline} with a {context}-wide text context"
    else:
        # Narrower or custom widths: OpenAI's CLIP uses quick_gelu, OpenCLIP plain gelu.
        text = _read_json(folder, "text_encoder/config.json") if "text_encoder" in components else {}
        activation = text.get("hidden_act")
        open_clip = activation == "gelu" if activation else bool(unet.get("use_linear_projection"))
        family = ModelFamily.SD2 if open_clip else ModelFamily.SD15
        evidence = f"{pipeline} with an {'OpenCLIP' if open_clip else 'OpenAI CLIP'} text encoder"
    scheduler = _scheduler(folder)
    lcm = (
        pipeline.startswith("LatentConsistencyModel")
        or scheduler.get("_class_name") == "LCMScheduler"
        or unet.get("time_cond_proj_dim") is not None
    )
    return FamilyInfo(
        family,
        _prediction_type(folder, scheduler),
        inpainting=_unet_inpainting(folder, unet),
        few_step=FewStep.LCM if lcm else None,
        pipeline_class=pipeline,
        components=components,
        evidence=evidence,
    )


def _sdxl_folder(folder: Path, pipeline: str, components: frozenset[str]) -> FamilyInfo:
    unet = _read_json(folder, "unet/config.json")
    # The refiner has no CLIP ViT-L: its model_index lists text_encoder as null.
    refiner = "text_encoder" not in components
    scheduler = _scheduler(folder)
    lcm = scheduler.get("_class_name") == "LCMScheduler" or unet.get("time_cond_proj_dim") is not None
    return FamilyInfo(
        ModelFamily.SDXL_REFINER if refiner else ModelFamily.SDXL,
        _prediction_type(folder, scheduler),
        inpainting=_unet_inpainting(folder, unet),
        few_step=FewStep.LCM if lcm else None,
        pipeline_class=pipeline,
        components=components,
        evidence=f"{pipeline} {'without' if refiner else 'with'} a CLIP ViT-L text encoder",
    )


def _flux_folder(folder: Path, pipeline: str, components: frozenset[str]) -> FamilyInfo:
    transformer = _read_json(folder, "transformer/config.json")
    in_channels = transformer.get("in_channels")
    if in_channels not in (_FLUX_IN_CHANNELS, _FLUX_FILL_IN_CHANNELS):
        raise UnsupportedModelError(
            f"{folder.name}: the Flux transformer takes {in_channels!r} input channels; this server runs FLUX.1 "
            f"text-to-image ({_FLUX_IN_CHANNELS}) and Fill ({_FLUX_FILL_IN_CHANNELS}) models, not Canny/Depth"
        )
    guidance = bool(transformer.get("guidance_embeds"))
    return FamilyInfo(
        ModelFamily.FLUX,
        PredictionType.FLOW_MATCH,
        inpainting=in_channels == _FLUX_FILL_IN_CHANNELS,
        few_step=None if guidance else FewStep.SCHNELL,
        pipeline_class=pipeline,
        components=components,
        evidence=f"{MODEL_INDEX} names {pipeline}",
    )


def _unet_inpainting(folder: Path, unet: dict[str, Any]) -> bool:
    in_channels = unet.get("in_channels", 4)
    if in_channels not in (4, 9):
        raise UnsupportedModelError(
            f"{folder.name}: the UNet takes {in_channels!r} input channels; this server runs text-to-image (4) "
            "and inpainting (9) UNets, not instruct-pix2pix (8) or upscalers (7)"
        )
    return bool(in_channels == 9)


def _scheduler(folder: Path) -> dict[str, Any]:
    path = folder / "scheduler" / "scheduler_config.json"
    return _read_json(folder, "scheduler/scheduler_config.json") if path.is_file() else {}


def _prediction_type(folder: Path, scheduler: dict[str, Any]) -> PredictionType | None:
    if not scheduler:
        return None
    # diffusers' schedulers default to epsilon when the config does not say.
    value = scheduler.get("prediction_type", PredictionType.EPSILON.value)
    try:
        return PredictionType(value)
    except ValueError:
        raise UnsupportedModelError(
            f"{folder.name}: scheduler_config.json has prediction_type {value!r}; known: epsilon, v_prediction, sample"
        ) from None


def scheduler_hints(config_dir: Path) -> tuple[PredictionType | None, FewStep | None]:
    """Prediction type and few-step hint of a config folder's scheduler (the `<id>.config/` beside a checkpoint)."""
    scheduler = _scheduler(config_dir)
    few_step = FewStep.LCM if scheduler.get("_class_name") == "LCMScheduler" else None
    return _prediction_type(config_dir, scheduler), few_step


def _declared(entry: object) -> bool:
    """A model_index entry names a component when it is [library, class] with both set (null marks it absent)."""
    return isinstance(entry, list) and len(entry) == 2 and all(isinstance(part, str) for part in entry)


def _read_json(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnsupportedModelError(f"{folder.name}: {name} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsupportedModelError(f"{folder.name}: {name} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UnsupportedModelError(f"{folder.name}: {name} is not a JSON object")
    return data
