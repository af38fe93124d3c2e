"""Runs one job on a loaded model: inputs from the job, add-ons, a fresh scheduler, seeded generators, progress,
then the shared post-processing (`finish_images`: safety screen, PNG with generation parameters)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch
from PIL import Image, ImageFilter

from sdserver.catalog.families.capabilities import CLIP_SKIP
from sdserver.engines.base import EngineOutput, StepContext
from sdserver.engines.diffusion.addons import TOME_RATIO, AddonRequest, job_addons
from sdserver.engines.diffusion.conditioning import family_addons, family_clip_skip, prompt_kwargs, size_kwargs
from sdserver.engines.diffusion.families import check_kind
from sdserver.engines.diffusion.finishing import FinishedImages, finish_images
from sdserver.engines.diffusion.loader import LoadedModel
from sdserver.engines.diffusion.passes import PassRunner, keep_original, pass_parameters
from sdserver.engines.diffusion.refiner import RefinerPlan, run_refined
from sdserver.engines.diffusion.schedulers import build_scheduler, family_scheduler
from sdserver.engines.inputs import read_input_image
from sdserver.job_params import GenerationParams, SchedulerChoice
from sdserver.jobs import Job, JobKind
from sdserver.objects.base import ObjectStore

SEED_MASK: Final = (1 << 64) - 1
DEFAULT_NSFW_THRESHOLD: Final = 0.5
# Inpaint outputs keep the unmasked pixels of the input exactly; the seam is feathered over this share of the side.
MASK_FEATHER: Final = 1 / 128

__all__ = ["FinishedImages", "finish_images", "run_job"]


@dataclass(frozen=True)
class JobInputs:
    """A job's generation settings as the pipelines take them (the API validated and defaulted them), with the seed
    and the sample count settled."""

    prompt: str
    negative_prompt: str | None
    steps: int
    guidance_scale: float
    seed: int
    samples: int
    strength: float
    clip_skip: int | None
    scheduler: SchedulerChoice


def job_inputs(job: Job, params: GenerationParams, model: LoadedModel) -> JobInputs:
    """The job's settings as `model` runs them (its family checked the scheduler)."""
    return JobInputs(
        prompt=params.prompt,
        negative_prompt=params.negative_prompt or None,
        steps=params.steps,
        guidance_scale=params.guidance_scale,
        seed=job_seed(job, params),
        samples=max(1, len(job.output_keys) or params.samples),
        strength=params.strength,
        clip_skip=params.clip_skip,
        scheduler=family_scheduler(params.scheduler, model.capabilities),
    )


def job_seed(job: Job, params: GenerationParams) -> int:
    """The seed the API set; a job without one gets a seed derived from its id, so a retry makes the same images."""
    if params.seed is not None:
        return params.seed & SEED_MASK
    return int.from_bytes(hashlib.sha256(f"job-seed:{job.id}".encode()).digest()[:4], "big")


def sample_generators(seed: int, samples: int) -> list[torch.Generator]:
    """Sample i draws its noise from a CPU generator seeded `seed + i`: the same noise on every device, and sample
    i of a batch matches a one-sample run with seed `seed + i` (up to the rounding of batched maths)."""
    return [torch.Generator("cpu").manual_seed((seed + index) & SEED_MASK) for index in range(samples)]


def run_job(
    model: LoadedModel,
    job: Job,
    objects: ObjectStore,
    ctx: StepContext,
    *,
    models_dir: Path,
    nsfw_threshold: float = DEFAULT_NSFW_THRESHOLD,
    refiner: RefinerPlan | None = None,
    passes: PassRunner | None = None,
) -> EngineOutput:
    """Make `samples` images for one job as one batch; raises JobFailed for inputs the job cannot use. `refiner`:
    the SDXL refiner pass the job asked for (None: not asked, or not an SDXL model); `passes`: what runs the job's
    `GenerationPasses` (None: a job asking for any fails)."""
    check_kind(model.model_id, model.info, model.capabilities, job.kind)
    params = job.params_as(GenerationParams)
    inputs = job_inputs(job, params, model)
    pipeline = model.pipelines[job.kind]
    pipeline.scheduler = build_scheduler(inputs.scheduler, model.scheduler_config, inputs.seed)
    skip = family_clip_skip(model, inputs.clip_skip)
    init, mask = input_images(job, params, objects)
    addons, family_meta = family_addons(model, AddonRequest.from_params(params))
    with job_addons(pipeline, model.addons, addons, models_dir, inputs.seed) as addon_meta:
        images = _generate(model, pipeline, job, inputs, ctx, skip, init, mask, refiner, passes)
    if init is not None and mask is not None:
        images = [paste_unmasked(image, init, mask) for image in images]
    if init is not None and params.passes.keep_box is not None:
        images = [keep_original(image, init, params.passes.keep_box) for image in images]
    # Faces at the size they were drawn (the restorer works on 512×512 crops), then any upscale.
    images, face_meta = _runner(passes).restore_faces(images, params.passes)
    if params.passes.upscale_scale > 1:
        images = _runner(passes).upscale(images, params.passes, ctx)
    extra = extra_parameters(inputs, addons, addon_meta, skip, from_image=init is not None)
    extra |= {name: value for name, value in pass_parameters(params.passes).items() if extra.get(name) is None}
    if refiner is not None and refiner.model is not None:
        extra["Refiner"] = refiner.note
    finished = finish_run(images, job, inputs, nsfw_threshold=nsfw_threshold, extra_parameters=extra)
    meta = run_meta(inputs, model, skip) | addon_meta | family_meta | face_meta | finished.meta
    if refiner is not None:
        meta["refiner"] = refiner.note
    return EngineOutput(images=finished.images, meta=meta)


def _generate(
    model: LoadedModel,
    pipeline: Any,
    job: Job,
    inputs: JobInputs,
    ctx: StepContext,
    skip: int | None,
    init: Image.Image | None,
    mask: Image.Image | None,
    refiner: RefinerPlan | None,
    passes: PassRunner | None = None,
) -> list[Image.Image]:
    kwargs = prompt_kwargs(model, pipeline, inputs.prompt, inputs.negative_prompt, skip)
    kwargs.update(size_kwargs(model, job.width, job.height))
    if init is None:
        kwargs.update(height=job.height, width=job.width)
    elif mask is None:
        # One init image per sample: SD3's img2img encodes image i with generator i and has no image i otherwise.
        kwargs.update(image=[init] * inputs.samples, strength=inputs.strength)
    else:
        kwargs.update(image=init, strength=inputs.strength)
    if mask is not None:
        kwargs.update(mask_image=mask, height=job.height, width=job.width)
    if init is not None and int(inputs.steps * inputs.strength) < 1:
        # No denoising step would run (diffusers refuses this): strength this low means "keep the image".
        return [init.copy() for _ in range(inputs.samples)]
    planned = job.params_as(GenerationParams).passes
    if planned.highres_fix or planned.panorama or planned.self_attention:
        made = _runner(passes).generate(model, job, planned, kwargs, ctx, lambda step: common_kwargs(inputs, step))
        if made is not None:
            return made
    if refiner is not None and refiner.model is not None:
        return run_refined(
            pipeline,
            refiner.model,
            kwargs | {"height": job.height, "width": job.width},
            lambda progress: common_kwargs(inputs, progress),
            prompt=inputs.prompt,
            negative_prompt=inputs.negative_prompt,
            skip=skip,
            scheduler_choice=inputs.scheduler,
            seed=inputs.seed,
            steps=inputs.steps,
            ctx=ctx,
            mask=mask,
        )
    with torch.inference_mode():
        return list(pipeline(**(common_kwargs(inputs, ctx) | kwargs)).images)


def _runner(passes: PassRunner | None) -> PassRunner:
    # Engines built without one (tests, tools) still run passes, without an upscaler.
    return passes if passes is not None else PassRunner(None)


def extra_parameters(
    inputs: JobInputs, addons: AddonRequest, addon_meta: dict[str, Any], skip: int | None, *, from_image: bool
) -> dict[str, Any]:
    """A1111's names for the settings beyond the standard ones, for the PNG `parameters` text of every generation
    (ControlNet adds its own after these); `addon_meta` is what `job_addons` reported."""
    tome = addon_meta["tomesd"] == "yes"
    return {
        "Denoising strength": inputs.strength if from_image else None,
        "Clip skip": skip + 1 if skip is not None else None,
        "VAE": addons.vae,
        "Lora": ", ".join(f"{lora}: {strength:g}" for lora, strength in addons.loras) or None,
        "Embeddings": ", ".join(addons.embeddings) or None,
        # What ran: a tomesd that could not be applied is not claimed.
        "Token merging ratio": TOME_RATIO if tome else None,
    }


def input_images(
    job: Job, params: GenerationParams, objects: ObjectStore
) -> tuple[Image.Image | None, Image.Image | None]:
    """(init image, mask) as the job's kind needs them, at the job's size."""
    size = (job.width, job.height)
    if job.kind is JobKind.TEXT2IMG:
        return None, None
    init = read_image(objects, params.init_image_key, size, "RGB", "init_image")
    if job.kind is not JobKind.INPAINT:
        return init, None
    return init, read_image(objects, params.mask_image_key, size, "L", "mask_image")


def common_kwargs(inputs: JobInputs, ctx: StepContext) -> dict[str, Any]:
    """The arguments every family's pipelines take alike (the prompts are `conditioning.prompt_kwargs`)."""

    def on_step_end(pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        # Raises JobCancelled when the job must stop; it propagates out of the pipeline call.
        ctx.step(index + 1, int(pipe.num_timesteps))
        return tensors

    return {
        "num_inference_steps": inputs.steps,
        "guidance_scale": inputs.guidance_scale,
        "num_images_per_prompt": inputs.samples,
        "generator": sample_generators(inputs.seed, inputs.samples),
        "callback_on_step_end": on_step_end,
        "output_type": "pil",
    }


def run_meta(inputs: JobInputs, model: LoadedModel, skip: int | None) -> dict[str, Any]:
    """What every generation reports in `meta` about the run: family, seed, scheduler, precision, clip skip."""
    # Reported in the request's counting: what ran, after fitting it to the text encoder's depth (none on Flux).
    clip_skip = inputs.clip_skip if model.capabilities.applies(CLIP_SKIP) else None
    return {
        "model_family": model.family.value,
        "seed": inputs.seed,
        "scheduler": inputs.scheduler.class_name,
        "use_karras_sigmas": "yes" if inputs.scheduler.use_karras_sigmas else "no",
        "algorithm_type": inputs.scheduler.algorithm_type,
        "precision": model.placement.precision,
        "clip_skip": skip + 1 if skip is not None else clip_skip,
    }


def read_image(objects: ObjectStore, key: Any, size: tuple[int, int], mode: str, field: str) -> Image.Image:
    """A stored input image decoded, converted to `mode` and resized to the job's size."""
    image = read_input_image(objects, key, field, mode=mode)
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def finish_run(
    images: list[Image.Image],
    job: Job,
    inputs: JobInputs,
    *,
    init: Image.Image | None = None,
    mask: Image.Image | None = None,
    nsfw_threshold: float,
    extra_parameters: dict[str, Any],
) -> FinishedImages:
    """The end of every diffusion job: an inpainting output gets the input's unmasked pixels back, then the shared
    finishing (safety screen, PNG whose parameters name the seed and the scheduler that ran)."""
    if mask is not None and init is not None:
        images = [paste_unmasked(image, init, mask) for image in images]
    return finish_images(
        images,
        job,
        seed=inputs.seed,
        sampler=inputs.scheduler.class_name,
        nsfw_threshold=nsfw_threshold,
        extra_parameters=extra_parameters,
    )


def paste_unmasked(generated: Image.Image, init: Image.Image, mask: Image.Image) -> Image.Image:
    """The generated image where the mask is white, the input elsewhere (the VAE round trip would blur it), with a
    slightly feathered seam."""
    hard = mask.point(lambda value: 255 if value >= 128 else 0)
    radius = max(1.0, min(mask.size) * MASK_FEATHER)
    soft = hard.filter(ImageFilter.GaussianBlur(radius))
    return Image.composite(generated.convert("RGB"), init, soft)
