"""ControlNet jobs: ControlNet weights from the models dir (a small LRU), pipelines built on the loaded model's own
modules, hint images, and the run itself (text2img, img2img or inpaint with one or several ControlNets)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetInpaintPipeline,
    StableDiffusionXLControlNetPipeline,
)
from PIL import Image

from sdserver.catalog.families import ModelFamily
from sdserver.catalog.hints import MAX_CONTROLNETS
from sdserver.catalog.layout import AddonKind, find_addon
from sdserver.engines.base import EngineOutput, JobFailed, StepContext
from sdserver.engines.diffusion import pipelines
from sdserver.engines.diffusion.addons import AddonRequest, job_addons
from sdserver.engines.diffusion.conditioning import family_addons, family_clip_skip, prompt_kwargs, size_kwargs
from sdserver.engines.diffusion.families import check_kind
from sdserver.engines.diffusion.hints import HINT_PREPROCESSORS, make_hint
from sdserver.engines.diffusion.loader import LOAD_OPTIONS, LoadedModel, sibling_pipeline
from sdserver.engines.diffusion.schedulers import build_scheduler
from sdserver.engines.lru import FingerprintLRU, files_fingerprint
from sdserver.engines.precision import Placement
from sdserver.errors import JobErrorCode
from sdserver.job_params import ControlNetMode, ControlNetParams
from sdserver.jobs import Job, JobKind
from sdserver.objects.base import ObjectStore

log = logging.getLogger(__name__)

# ControlNets are small next to the base model (~700 MB for SD 1.5 in fp16); one job's worth stays loaded for reuse.
MAX_LOADED_CONTROLNETS: Final = MAX_CONTROLNETS

_SD_PIPELINES: Final[dict[ControlNetMode, Any]] = {
    ControlNetMode.TEXT2IMG: StableDiffusionControlNetPipeline,
    ControlNetMode.IMG2IMG: StableDiffusionControlNetImg2ImgPipeline,
    ControlNetMode.INPAINT: StableDiffusionControlNetInpaintPipeline,
}
# The families diffusers has ControlNet pipelines for that this engine builds (capabilities.py lists the same).
_PIPELINES: Final[dict[ModelFamily, dict[ControlNetMode, Any]]] = {
    ModelFamily.SD15: _SD_PIPELINES,
    ModelFamily.SD2: _SD_PIPELINES,
    ModelFamily.SDXL: {
        ControlNetMode.TEXT2IMG: StableDiffusionXLControlNetPipeline,
        ControlNetMode.IMG2IMG: StableDiffusionXLControlNetImg2ImgPipeline,
        ControlNetMode.INPAINT: StableDiffusionXLControlNetInpaintPipeline,
    },
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
    params = job.params_as(ControlNetParams)
    mode = params.mode
    check_kind(model.model_id, model.info, model.capabilities, JobKind.CONTROLNET)
    if mode is not ControlNetMode.INPAINT and model.info.inpainting:
        raise JobFailed(
            JobErrorCode.UNSUPPORTED_MODEL, f"Model {model.model_id} is an inpainting model; send a mask_image"
        )
    inputs = pipelines.job_inputs(job, params.generation, model)
    controlnets = cache.get([unit.model for unit in params.units])
    scheduler = build_scheduler(inputs.scheduler, model.scheduler_config, inputs.seed)
    pipeline = _pipeline(model, mode, controlnets, scheduler)
    init, control_source, mask = _input_images(job, params, objects)
    hints = [_hint(control_source, unit.hint_type, params.auto_hint) for unit in params.units]
    skip = family_clip_skip(model, inputs.clip_skip)
    addons, family_meta = family_addons(model, AddonRequest.from_params(params.generation))
    with job_addons(pipeline, model.addons, addons, models_dir, inputs.seed) as addon_meta:
        images = _generate(model, pipeline, job, inputs, params, ctx, skip, init, hints, mask)
    extra = pipelines.extra_parameters(
        inputs, addons, addon_meta, skip, from_image=mode is not ControlNetMode.TEXT2IMG
    ) | _controlnet_parameters(params)
    finished = pipelines.finish_run(
        images, job, inputs, init=init, mask=mask, nsfw_threshold=nsfw_threshold, extra_parameters=extra
    )
    meta = _meta(inputs, model, skip, params) | addon_meta | family_meta | finished.meta
    return EngineOutput(images=finished.images, meta=meta)


def _controlnet_parameters(params: ControlNetParams) -> dict[str, Any]:
    """The PNG `parameters` entries ControlNet adds after the ones every generation writes."""
    return {
        "ControlNet": ", ".join(
            f"{unit.model} ({unit.hint_type or 'none'}, weight {unit.scale:g})" for unit in params.units
        ),
        "Guess mode": "True" if params.guess_mode else None,
    }


def _generate(
    model: LoadedModel,
    pipeline: Any,
    job: Job,
    inputs: pipelines.JobInputs,
    params: ControlNetParams,
    ctx: StepContext,
    skip: int | None,
    init: Image.Image | None,
    hints: list[Image.Image],
    mask: Image.Image | None,
) -> list[Image.Image]:
    kwargs = pipelines.common_kwargs(inputs, ctx)
    kwargs.update(prompt_kwargs(model, pipeline, inputs.prompt, inputs.negative_prompt, skip))
    kwargs.update(size_kwargs(model, job.width, job.height))
    scales = [unit.scale for unit in params.units]
    kwargs.update(
        height=job.height,
        width=job.width,
        controlnet_conditioning_scale=scales if len(hints) > 1 else scales[0],
        guess_mode=params.guess_mode,
    )
    hint_arg: Any = hints if len(hints) > 1 else hints[0]
    if init is None:
        kwargs.update(image=hint_arg)
    else:
        kwargs.update(image=init, control_image=hint_arg, strength=inputs.strength)
    if mask is not None:
        kwargs.update(mask_image=mask)
    if init is not None and int(inputs.steps * inputs.strength) < 1:
        # No denoising step would run (diffusers refuses this): strength this low means "keep the image".
        return [init.copy() for _ in range(inputs.samples)]
    with torch.inference_mode():
        return list(pipeline(**kwargs).images)


def _pipeline(model: LoadedModel, mode: ControlNetMode, controlnets: list[Any], scheduler: Any) -> Any:
    """A ControlNet pipeline around the very modules the model's other pipelines use: no second copy of weights."""
    base = next(iter(model.pipelines.values()))
    pipeline = sibling_pipeline(
        _PIPELINES[model.family][mode],
        base,
        controlnet=controlnets if len(controlnets) > 1 else controlnets[0],
        scheduler=scheduler,
        **LOAD_OPTIONS[model.family],
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _input_images(
    job: Job, params: ControlNetParams, objects: ObjectStore
) -> tuple[Image.Image | None, Image.Image, Image.Image | None]:
    """(init image, the picture the hints come from, mask) as the job's mode needs them, at the job's size."""
    size = (job.width, job.height)
    generation = params.generation
    control = pipelines.read_image(objects, params.control_image_key, size, "RGB", "control_image")
    if params.mode is ControlNetMode.TEXT2IMG:
        return None, control, None
    init = pipelines.read_image(objects, generation.init_image_key, size, "RGB", "init_image")
    if params.mode is not ControlNetMode.INPAINT:
        return init, control, None
    return init, control, pipelines.read_image(objects, generation.mask_image_key, size, "L", "mask_image")


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
    inputs: pipelines.JobInputs, model: LoadedModel, skip: int | None, params: ControlNetParams
) -> dict[str, Any]:
    scales = [unit.scale for unit in params.units]
    return pipelines.run_meta(inputs, model, skip) | {
        "controlnet_mode": params.mode.value,
        "controlnet_model": ",".join(unit.model for unit in params.units),
        "controlnet_type": ",".join(unit.hint_type or "" for unit in params.units),
        "controlnet_conditioning_scale": scales if len(scales) > 1 else scales[0],
        "guess_mode": "yes" if params.guess_mode else "no",
        "auto_hint": "yes" if params.auto_hint else "no",
        "hint_preprocessors": sorted(HINT_PREPROCESSORS),
    }
