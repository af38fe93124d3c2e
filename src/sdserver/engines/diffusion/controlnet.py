"""ControlNet jobs: ControlNet weights from the models dir (a small LRU), pipelines built on the loaded model's own
modules, hint images, and the run itself (text2img, img2img or inpaint with one or several ControlNets)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
)
from PIL import Image

from sdserver.catalog.hints import MAX_CONTROLNETS
from sdserver.catalog.layout import AddonKind, find_addon
from sdserver.catalog.schedulers import SchedulerChoice
from sdserver.engines.base import EngineOutput, JobFailed, StepContext
from sdserver.engines.diffusion import pipelines
from sdserver.engines.diffusion.addons import AddonRequest, job_addons
from sdserver.engines.diffusion.hints import HINT_PREPROCESSORS, make_hint
from sdserver.engines.diffusion.loader import INPAINT_IN_CHANNELS, LoadedModel, unet_in_channels
from sdserver.engines.diffusion.prompts import clip_skip_kwargs
from sdserver.engines.diffusion.schedulers import build_scheduler
from sdserver.engines.lru import FingerprintLRU, files_fingerprint
from sdserver.engines.precision import Placement
from sdserver.errors import JobErrorCode
from sdserver.jobs import Job, JobKind
from sdserver.objects.base import ObjectStore

log = logging.getLogger(__name__)
T = TypeVar("T")

# ControlNets are small next to the base model (~700 MB for SD 1.5 in fp16); one job's worth stays loaded for reuse.
MAX_LOADED_CONTROLNETS: Final = MAX_CONTROLNETS
DEFAULT_CONDITIONING_SCALE: Final = 1.0

TEXT2IMG_MODE: Final = "text2img"
IMG2IMG_MODE: Final = "img2img"
INPAINT_MODE: Final = "inpaint"
_PIPELINES: Final[dict[str, Any]] = {
    TEXT2IMG_MODE: StableDiffusionControlNetPipeline,
    IMG2IMG_MODE: StableDiffusionControlNetImg2ImgPipeline,
    INPAINT_MODE: StableDiffusionControlNetInpaintPipeline,
}


class ControlNetCache:
    """ControlNet weights by id, on the engine's device and precision; the least recently used goes first."""

    def __init__(self, models_dir: Path, placement: Placement, max_loaded: int = MAX_LOADED_CONTROLNETS) -> None:
        self._models_dir = models_dir
        self._placement = placement
        self._loaded: FingerprintLRU[str, Any] = FingerprintLRU(max(1, max_loaded))

    def get(self, controlnet_ids: Sequence[str]) -> list[Any]:
        """The ControlNets for one job, in order; raises JobFailed naming an id that is not on disk."""
        if len(controlnet_ids) > self._loaded.max_entries:
            raise JobFailed(
                JobErrorCode.INVALID_PARAMS,
                f"controlnet_model: at most {self._loaded.max_entries} ControlNets per job, got {len(controlnet_ids)}",
            )
        return [self._one(controlnet_id) for controlnet_id in controlnet_ids]

    def held(self) -> frozenset[str]:
        return self._loaded.keys()

    def clear(self) -> None:
        self._loaded.clear()

    def _one(self, controlnet_id: str) -> Any:
        path = find_addon(self._models_dir, AddonKind.CONTROLNET, controlnet_id)
        if path is None:
            self._loaded.pop(controlnet_id)
            raise JobFailed(
                JobErrorCode.CONTROLNET_NOT_FOUND, f"controlnet_model: ControlNet {controlnet_id!r} not found"
            )
        fingerprint = files_fingerprint(path)
        cached = self._loaded.get(controlnet_id, fingerprint)
        if cached is not None:
            return cached
        # Not loaded, or replaced on disk: the old copy and the oldest others go before the new one loads.
        self._loaded.pop(controlnet_id)
        self._loaded.make_room()
        log.info("loading ControlNet %s from %s", controlnet_id, path)
        model = _load_controlnet(controlnet_id, path, self._placement)
        self._loaded.put(controlnet_id, fingerprint, model)
        return model


def _load_controlnet(controlnet_id: str, path: Path, placement: Placement) -> Any:
    try:
        if path.is_dir():
            model = ControlNetModel.from_pretrained(  # type: ignore[no-untyped-call]
                path, dtype=placement.dtype, local_files_only=True
            )
        else:
            model = ControlNetModel.from_single_file(str(path), dtype=placement.dtype, local_files_only=True)
    except (torch.OutOfMemoryError, torch.AcceleratorError):
        raise  # device trouble, not a bad file: the engine maps it
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise JobFailed(
            JobErrorCode.MODEL_LOAD_FAILED, f"controlnet_model: ControlNet {controlnet_id!r} could not be loaded: {exc}"
        ) from exc
    return model.to(placement.device).eval()


@dataclass(frozen=True)
class ControlNetInputs:
    """The ControlNet part of a job's params (the API validated them; one type and scale per ControlNet)."""

    models: list[str]
    types: list[str | None]
    scales: list[float]
    guess_mode: bool
    auto_hint: bool


def controlnet_inputs(job: Job) -> ControlNetInputs:
    params = job.params
    models = [str(item) for item in _as_list(params.get("controlnet_model"))]
    if not models:
        raise JobFailed(JobErrorCode.INVALID_PARAMS, "controlnet_model: the job names no ControlNet")
    types = [str(item) if item else None for item in _as_list(params.get("controlnet_type"))] or [None]
    scales = [float(item) for item in _as_list(params.get("controlnet_conditioning_scale"))] or [
        DEFAULT_CONDITIONING_SCALE
    ]
    return ControlNetInputs(
        models=models,
        types=_per_model(types, len(models), "controlnet_type"),
        scales=_per_model(scales, len(models), "controlnet_conditioning_scale"),
        guess_mode=bool(params.get("guess_mode", False)),
        auto_hint=bool(params.get("auto_hint", False)),
    )


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _per_model(values: list[T], count: int, field: str) -> list[T]:
    """One value for every ControlNet, or exactly one per ControlNet."""
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise JobFailed(
            JobErrorCode.INVALID_PARAMS, f"{field}: give one value or one per ControlNet ({count}), got {len(values)}"
        )
    return values


def job_mode(job: Job) -> str:
    """inpaint with a mask; img2img when both a start image and a separate control image are given; otherwise
    text2img, with the control image (or the init image) only steering the ControlNet."""
    params = job.params
    if params.get("mask_image_key"):
        return INPAINT_MODE
    if params.get("init_image_key") and params.get("control_image_key"):
        return IMG2IMG_MODE
    return TEXT2IMG_MODE


def run_controlnet_job(
    model: LoadedModel,
    job: Job,
    objects: ObjectStore,
    ctx: StepContext,
    cache: ControlNetCache,
    *,
    models_dir: Path,
    nsfw_threshold: float,
) -> EngineOutput:
    """Make `samples` images for one ControlNet job as one batch, with the job's add-ons (LoRA, VAE, embeddings,
    tomesd) and the shared finishing (safety screen, PNG parameters); raises JobFailed for inputs it cannot use."""
    mode = job_mode(job)
    if mode != INPAINT_MODE and unet_in_channels(model) == INPAINT_IN_CHANNELS:
        raise JobFailed(
            JobErrorCode.UNSUPPORTED_MODEL, f"Model {model.model_id} is an inpainting model; send a mask_image"
        )
    inputs = pipelines.job_inputs(job)
    control = controlnet_inputs(job)
    choice = pipelines.choose_scheduler(model, job, inputs, from_image=mode != TEXT2IMG_MODE)
    controlnets = cache.get(control.models)
    pipeline = _pipeline(model, mode, controlnets, build_scheduler(choice, model.scheduler_config, inputs.seed))
    size = (job.width, job.height)
    init, control_source, mask = _input_images(job, objects, size)
    hints = [_hint(control_source, kind, control.auto_hint) for kind in control.types]
    skip = pipelines.diffusers_clip_skip(inputs.clip_skip, model.text_layers)
    addons = AddonRequest.from_job(job)
    with job_addons(pipeline, model.addons, addons, models_dir, inputs.seed) as addon_meta:
        images = _generate(pipeline, job, inputs, control, ctx, skip, mode, init, hints, mask)
    extra = _extra_parameters(inputs, addons, control, skip, mode)
    finished = pipelines.finish_run(
        images, job, inputs, choice, init=init, mask=mask, nsfw_threshold=nsfw_threshold, extra_parameters=extra
    )
    meta = _meta(inputs, choice, model, skip, control, mode) | addon_meta | finished.meta
    return EngineOutput(images=finished.images, meta=meta)


def _extra_parameters(
    inputs: pipelines.JobInputs, addons: AddonRequest, control: ControlNetInputs, skip: int | None, mode: str
) -> dict[str, Any]:
    """A1111's names for the settings beyond the standard ones, for the PNG `parameters` text."""
    return {
        "Denoising strength": inputs.strength if mode != TEXT2IMG_MODE else None,
        "Clip skip": skip + 1 if skip is not None else None,
        "VAE": addons.vae,
        "Lora": ", ".join(f"{lora}: {strength:g}" for lora, strength in addons.loras) or None,
        "ControlNet": ", ".join(
            f"{name} ({kind or 'none'}, weight {scale:g})"
            for name, kind, scale in zip(control.models, control.types, control.scales, strict=True)
        ),
        "Guess mode": "True" if control.guess_mode else None,
    }


def _generate(
    pipeline: Any,
    job: Job,
    inputs: pipelines.JobInputs,
    control: ControlNetInputs,
    ctx: StepContext,
    skip: int | None,
    mode: str,
    init: Image.Image | None,
    hints: list[Image.Image],
    mask: Image.Image | None,
) -> list[Image.Image]:
    kwargs = pipelines.common_kwargs(inputs, ctx)
    if skip is not None:
        # Inside the add-ons: embeddings and text-encoder LoRA must shape these embeddings too.
        kwargs.update(clip_skip_kwargs(pipeline, inputs.prompt, inputs.negative_prompt, skip))
    kwargs.update(
        height=job.height,
        width=job.width,
        controlnet_conditioning_scale=control.scales if len(hints) > 1 else control.scales[0],
        guess_mode=control.guess_mode,
    )
    hint_arg: Any = hints if len(hints) > 1 else hints[0]
    if mode == TEXT2IMG_MODE:
        kwargs.update(image=hint_arg)
    else:
        kwargs.update(image=init, control_image=hint_arg, strength=inputs.strength)
    if mask is not None:
        kwargs.update(mask_image=mask)
    if mode != TEXT2IMG_MODE and init is not None and int(inputs.steps * inputs.strength) < 1:
        # No denoising step would run (diffusers refuses this): strength this low means "keep the image".
        return [init.copy() for _ in range(inputs.samples)]
    with torch.inference_mode():
        return list(pipeline(**kwargs).images)


def _pipeline(model: LoadedModel, mode: str, controlnets: list[Any], scheduler: Any) -> Any:
    """A ControlNet pipeline around the very modules the model's other pipelines use: no second copy of weights."""
    base = model.pipelines[JobKind.TEXT2IMG]
    pipeline = _PIPELINES[mode](
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        unet=base.unet,
        controlnet=controlnets if len(controlnets) > 1 else controlnets[0],
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _input_images(
    job: Job, objects: ObjectStore, size: tuple[int, int]
) -> tuple[Image.Image | None, Image.Image, Image.Image | None]:
    """(init image, the picture the hints come from, mask), at the job's size."""
    params = job.params
    init = (
        pipelines.read_image(objects, params["init_image_key"], size, "RGB", "init_image")
        if params.get("init_image_key")
        else None
    )
    if params.get("control_image_key"):
        control = pipelines.read_image(objects, params["control_image_key"], size, "RGB", "control_image")
    elif init is not None:
        control = init
    else:
        raise JobFailed(
            JobErrorCode.INVALID_IMAGE, "control_image: the job has neither a control_image nor an init_image"
        )
    mask = (
        pipelines.read_image(objects, params["mask_image_key"], size, "L", "mask_image")
        if params.get("mask_image_key")
        else None
    )
    if mask is not None and init is None:
        raise JobFailed(JobErrorCode.INVALID_IMAGE, "init_image: inpainting with a mask_image needs an init_image")
    return init, control, mask


def _hint(image: Image.Image, controlnet_type: str | None, auto_hint: bool) -> Image.Image:
    if not auto_hint:
        return image
    if controlnet_type is None or controlnet_type not in HINT_PREPROCESSORS:
        raise JobFailed(
            JobErrorCode.INVALID_PARAMS,
            f"controlnet_type: auto_hint has no preprocessor for {controlnet_type!r}; "
            f"supported: {', '.join(sorted(HINT_PREPROCESSORS))}",
        )
    return make_hint(image, controlnet_type)


def _meta(
    inputs: pipelines.JobInputs,
    choice: SchedulerChoice,
    model: LoadedModel,
    skip: int | None,
    control: ControlNetInputs,
    mode: str,
) -> dict[str, Any]:
    return pipelines.run_meta(inputs, choice, model, skip) | {
        "controlnet_mode": mode,
        "controlnet_model": ",".join(control.models),
        "controlnet_type": ",".join(kind or "" for kind in control.types),
        "controlnet_conditioning_scale": control.scales if len(control.scales) > 1 else control.scales[0],
        "guess_mode": "yes" if control.guess_mode else "no",
        "auto_hint": "yes" if control.auto_hint else "no",
        "hint_preprocessors": sorted(HINT_PREPROCESSORS),
    }
