"""Runs several jobs with one batch key as ONE pipeline call: each job keeps its prompts, seeds (one generator per
image), sample count and init image, reports its own progress, and gets back exactly its own images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sdserver.batch_keys import SOLO_PREFIX, batch_key
from sdserver.engines.base import EngineOutput, StepContext
from sdserver.engines.diffusion.addons import AddonRequest, job_addons
from sdserver.engines.diffusion.conditioning import family_addons, family_clip_skip, prompt_kwargs, size_kwargs
from sdserver.engines.diffusion.families import check_kind
from sdserver.engines.diffusion.loader import LoadedModel
from sdserver.engines.diffusion.pipelines import (
    JobInputs,
    extra_parameters,
    finish_run,
    input_images,
    job_inputs,
    run_meta,
    sample_generators,
)
from sdserver.engines.diffusion.schedulers import build_scheduler
from sdserver.job_params import GenerationParams
from sdserver.jobs import Job
from sdserver.objects.base import ObjectStore

# Embedding tensors a pipeline may take instead of prompt strings (CLIP skip on SD 1.x/2.x builds them).
_EMBEDDING_KEYS = ("prompt_embeds", "negative_prompt_embeds")


@dataclass(frozen=True)
class _Member:
    """One job of the batch with what it brings: its settings and (img2img) its init image."""

    job: Job
    inputs: JobInputs
    init: Image.Image | None


def run_batch(
    model: LoadedModel,
    jobs: Sequence[Job],
    objects: ObjectStore,
    ctx: Callable[[Job], StepContext],
    *,
    models_dir: Path,
    nsfw_threshold: float,
) -> list[EngineOutput]:
    """One output per job, in order. The jobs share a batch key (batch_keys.py): kind, size, steps, scheduler,
    guidance, strength and add-ons are the first job's for all of them."""
    members = []
    for job in jobs:
        check_kind(model.model_id, model.info, model.capabilities, job.kind)
        params = job.params_as(GenerationParams)
        init, _mask = input_images(job, params, objects)
        members.append(_Member(job, job_inputs(job, params, model), init))
    lead = members[0]
    pipeline = model.pipelines[lead.job.kind]
    pipeline.scheduler = build_scheduler(lead.inputs.scheduler, model.scheduler_config, lead.inputs.seed)
    skip = family_clip_skip(model, lead.inputs.clip_skip)
    addons, family_meta = family_addons(model, AddonRequest.from_params(lead.job.params_as(GenerationParams)))
    with job_addons(pipeline, model.addons, addons, models_dir, lead.inputs.seed) as addon_meta:
        images = _generate(model, pipeline, members, ctx, skip)
    outputs = []
    start = 0
    for member in members:
        own = images[start : start + member.inputs.samples]
        start += member.inputs.samples
        from_image = member.init is not None
        extra = extra_parameters(member.inputs, addons, addon_meta, skip, from_image=from_image)
        finished = finish_run(
            own, member.job, member.inputs, init=member.init, mask=None,
            nsfw_threshold=nsfw_threshold, extra_parameters=extra,
        )  # fmt: skip
        meta = run_meta(member.inputs, model, skip) | addon_meta | family_meta | finished.meta
        outputs.append(EngineOutput(images=finished.images, meta=meta | {"batch_size": len(members)}))
    return outputs


def _generate(
    model: LoadedModel,
    pipeline: Any,
    members: Sequence[_Member],
    ctx: Callable[[Job], StepContext],
    skip: int | None,
) -> list[Image.Image]:
    """All the members' images, job after job and sample after sample, from one pipeline call."""
    lead = members[0]
    if lead.init is not None and int(lead.inputs.steps * lead.inputs.strength) < 1:
        # No denoising step would run: strength this low keeps each job's own image (as a job alone does).
        return [member.init.copy() for member in members if member.init for _ in range(member.inputs.samples)]
    kwargs = _prompts(model, pipeline, members, skip)
    kwargs.update(size_kwargs(model, lead.job.width, lead.job.height))
    if lead.init is None:
        kwargs.update(height=lead.job.height, width=lead.job.width)
    else:
        inits = [member.init for member in members if member.init for _ in range(member.inputs.samples)]
        kwargs.update(image=inits, strength=lead.inputs.strength)
    generators = [
        generator for member in members for generator in sample_generators(member.inputs.seed, member.inputs.samples)
    ]

    def on_step_end(pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        # Each job hears of its own progress; the worker's context raises JobCancelled once the whole batch must
        # stop (a job cancelled alone is settled by the worker and its images are dropped).
        total = int(pipe.num_timesteps)
        for member in members:
            ctx(member.job).step(index + 1, total)
        return tensors

    with torch.inference_mode():
        result = pipeline(
            **kwargs,
            num_inference_steps=lead.inputs.steps,
            guidance_scale=lead.inputs.guidance_scale,
            num_images_per_prompt=1,
            generator=generators,
            callback_on_step_end=on_step_end,
            output_type="pil",
        )
    return list(result.images)


def _prompts(model: LoadedModel, pipeline: Any, members: Sequence[_Member], skip: int | None) -> dict[str, Any]:
    """The prompt arguments with one row per image: each job's prompt (or its embeddings) repeated per sample."""
    per_job = [
        prompt_kwargs(model, pipeline, member.inputs.prompt, member.inputs.negative_prompt, skip) for member in members
    ]
    counts = [member.inputs.samples for member in members]
    first = per_job[0]
    merged: dict[str, Any] = {}
    for name, value in first.items():
        if name in _EMBEDDING_KEYS:
            merged[name] = torch.cat(
                [kwargs[name].repeat_interleave(count, dim=0) for kwargs, count in zip(per_job, counts, strict=True)]
            )
        elif name in ("prompt", "negative_prompt") and value is not None:
            merged[name] = [kwargs[name] for kwargs, count in zip(per_job, counts, strict=True) for _ in range(count)]
        else:
            # None prompts (embeddings given instead, or no negative prompt in any job) and shared settings.
            merged[name] = value
    return merged


def batch_groups(jobs: Sequence[Job]) -> list[list[Job]]:
    """The jobs split into groups that may share a pipeline call (same kind, size and batch key), in order of
    their first job; a job that must run alone is a group of its own."""
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        key = batch_key(job.kind.value, job.params, unique=f"job:{job.id}")
        if not key:
            key = _solo_group(job)
        groups.setdefault((job.kind.value, job.model_id, f"{job.width}x{job.height}", key), []).append(job)
    return list(groups.values())


def _solo_group(job: Job) -> str:
    return f"{SOLO_PREFIX}job:{job.id}"
