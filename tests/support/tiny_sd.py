"""Tiny seeded SD models for tests (built by `sdserver.engines.diffusion.tiny`), plus jobs and step contexts.

Their outputs are noise; they exist so tests load weights through the production path in well under a second.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# Before diffusers/huggingface_hub read it: a test that tried the hub would fail at once instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from PIL import Image

from sdserver.catalog.schedulers import plan_scheduler
from sdserver.engines.base import JobCancelled
from sdserver.engines.diffusion.tiny import (
    LAYERS_PER_BLOCK,
    SD15_SCHEDULER,
    UNET_CHANNELS,
    VAE_CHANNELS,
    build_tiny_pipeline,
    make_tiny_model,
    original_layout_state_dict,
)
from sdserver.engines.diffusion.tiny_families.clip_vocab import TINY_WORDS, tiny_tokenizer
from sdserver.job_params import GenerationParams, JobParams, generation_part
from sdserver.jobs import Job, JobKind, JobStatus

__all__ = [
    "LAYERS_PER_BLOCK",
    "SD15_SCHEDULER",
    "TINY_WORDS",
    "UNET_CHANNELS",
    "VAE_CHANNELS",
    "RecordingContext",
    "build_tiny_pipeline",
    "generation_params",
    "make_job",
    "make_tiny_model",
    "original_layout_state_dict",
    "pixels",
    "png_bytes",
    "tiny_tokenizer",
]


# --- jobs and step contexts for engine tests ---------------------------------------------------------------------


def generation_params(
    *,
    from_image: bool = False,
    scheduler: str = "EulerDiscreteScheduler",
    use_karras_sigmas: bool = False,
    algorithm_type: str | None = None,
    **fields: Any,
) -> GenerationParams:
    """Generation params as the API stores them (the scheduler planned from a name), for a tiny model: 2 steps, a
    fixed seed, and token merging and the safety checker off unless a test turns them on."""
    choice = plan_scheduler(scheduler, use_karras_sigmas, algorithm_type, from_image=from_image)
    values: dict[str, Any] = {"prompt": "a photo of a cat", "steps": 2, "seed": 1234}
    values.update(tomesd=False, safety_checker=False)
    return GenerationParams(scheduler=choice, **(values | fields))


def make_job(
    model_id: str,
    kind: JobKind = JobKind.TEXT2IMG,
    params: JobParams | None = None,
    *,
    width: int = 64,
    height: int = 64,
    job_id: int = 1,
    **fields: Any,
) -> Job:
    """A running job as the store would hand it to the engine: `params`, or generation params built from `fields`
    (see `generation_params`)."""
    if params is None:
        params = generation_params(from_image=kind is not JobKind.TEXT2IMG, **fields)
    generation = generation_part(params)
    return Job(
        id=job_id,
        owner_key_id=1,
        kind=kind,
        model_id=model_id,
        params=params,
        output_keys=tuple(f"outputs/{job_id}/{index}.png" for index in range(generation.samples)),
        future_links=(),
        width=width,
        height=height,
        steps=generation.steps,
        scheduler=generation.scheduler.class_name,
        status=JobStatus.RUNNING,
        attempts=1,
        max_attempts=3,
        created_at=datetime.now(UTC),
    )


@dataclass
class RecordingContext:
    """Records every (done, total) step report; raises JobCancelled once `cancel_at` steps are done."""

    cancel_at: int | None = None
    steps: list[tuple[int, int]] = field(default_factory=list)

    def step(self, done: int, total: int) -> None:
        self.steps.append((done, total))
        if self.cancel_at is not None and done >= self.cancel_at:
            raise JobCancelled("cancel requested")


def pixels(png: bytes) -> np.ndarray[Any, np.dtype[np.int16]]:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
