"""The SDXL refiner pass (`refiner: yes`): which installed model is the refiner, and a run that denoises the first
80% on the base model and the rest on the refiner, from the base's latents."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch
from PIL import Image

from sdserver.catalog.families import ModelFamily, UnsupportedModelError, detect_source_family
from sdserver.catalog.layout import ModelSource, find_model, list_models
from sdserver.engines.base import StepContext
from sdserver.engines.diffusion.conditioning import prompt_kwargs
from sdserver.engines.diffusion.loader import LoadedModel
from sdserver.engines.diffusion.schedulers import build_scheduler
from sdserver.job_params import SchedulerChoice
from sdserver.jobs import JobKind

log = logging.getLogger(__name__)

# Where the base hands over: Stability's recommended split (the refiner is trained on the low-noise 20%).
REFINER_SWITCH: Final = 0.8
NOT_INSTALLED: Final = "not installed"


@dataclass(frozen=True)
class RefinerPlan:
    """The refiner a job runs with, or None; `note` is what `meta.refiner` reports (its id, or why none ran)."""

    model: LoadedModel | None
    note: str


def find_refiner_id(models_dir: Path, configured: str | None) -> tuple[str | None, str]:
    """(the refiner's model id, or None; the note for meta). The `SDSERVER_SDXL_REFINER` setting names it; without
    it the one installed model of family sdxl_refiner is used (none, or several: no refiner runs)."""
    if configured:
        source = find_model(models_dir, configured)
        if source is None:
            log.warning("SDSERVER_SDXL_REFINER names %s, which is not installed", configured)
            return None, NOT_INSTALLED
        return configured, configured
    found = [source.model_id for source in list_models(models_dir) if _is_refiner(source)]
    if len(found) == 1:
        return found[0], found[0]
    if not found:
        return None, NOT_INSTALLED
    return None, f"{NOT_INSTALLED}: several refiners ({', '.join(found)}); set SDSERVER_SDXL_REFINER to one"


def _is_refiner(source: ModelSource) -> bool:
    try:
        info = detect_source_family(source)
    except UnsupportedModelError:
        return False
    return info is not None and info.family is ModelFamily.SDXL_REFINER


class _ProgressOffset:
    """Steps of two pipeline calls reported as one run of `total` steps (the base's, then the refiner's)."""

    def __init__(self, ctx: StepContext, total: int) -> None:
        self._ctx, self._total, self.offset = ctx, total, 0
        self.last = 0

    def step(self, done: int, total: int) -> None:
        self.last = done
        self._ctx.step(min(self.offset + done, self._total), self._total)


def run_refined(
    base_pipeline: Any,
    refiner: LoadedModel,
    base_kwargs: dict[str, Any],
    make_common: Callable[[StepContext], dict[str, Any]],
    *,
    prompt: str,
    negative_prompt: str | None,
    skip: int | None,
    scheduler_choice: SchedulerChoice,
    seed: int,
    steps: int,
    ctx: StepContext,
    mask: Image.Image | None,
) -> list[Image.Image]:
    """Base to REFINER_SWITCH as latents, then the refiner from there (its inpaint pipeline when there is a mask).
    `make_common(ctx)` gives the shared call arguments for a step context; `base_kwargs` the base call's own."""
    progress = _ProgressOffset(ctx, steps)
    kwargs = make_common(progress) | base_kwargs | {"denoising_end": REFINER_SWITCH, "output_type": "latent"}
    with torch.inference_mode():
        latents = base_pipeline(**kwargs).images
    progress.offset = progress.last
    pipeline = refiner.pipelines[JobKind.INPAINT if mask is not None else JobKind.IMG2IMG]
    pipeline.scheduler = build_scheduler(scheduler_choice, refiner.scheduler_config, seed)
    count = int(latents.shape[0])
    refine = make_common(progress) | prompt_kwargs(refiner, pipeline, prompt, negative_prompt, skip)
    # One prompt per latent: the refiner's batch is the base's samples, each already drawn from its own seed.
    refine["prompt"] = [prompt] * count
    if refine.get("negative_prompt") is not None:
        refine["negative_prompt"] = [refine["negative_prompt"]] * count
    refine.update(image=latents, num_images_per_prompt=1, denoising_start=REFINER_SWITCH)
    if mask is not None:
        refine.update(mask_image=mask, height=base_kwargs["height"], width=base_kwargs["width"])
    own_vae = pipeline.vae
    # The refiner shares SDXL's latent space: a VAE the job swapped in on the base decodes the refined latents too.
    pipeline.vae = base_pipeline.vae
    try:
        with torch.inference_mode():
            return list(pipeline(**refine).images)
    finally:
        pipeline.vae = own_vae
