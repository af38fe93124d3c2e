"""Cross-request batching on tiny models of every family: a batched job's images equal the same job run alone,
each job gets its own outputs and progress, and jobs that must not share a call do not."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sdserver.config import Settings
from sdserver.engines.base import EngineOutput, JobCancelled
from sdserver.engines.diffusion.engine import DiffusionEngine
from sdserver.engines.diffusion.tiny_families.names import TinyFamily
from sdserver.engines.diffusion.tiny_families.writer import make_tiny_family_model
from sdserver.job_params import GenerationParams, SchedulerChoice
from sdserver.jobs import Job, JobKind
from sdserver.objects.base import make_object_key
from sdserver.objects.local import LocalObjectStore
from tests.support.tiny_sd import RecordingContext, make_job, pixels, png_bytes

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]

SIZE = 64
FLOW = SchedulerChoice("FlowMatchEulerDiscreteScheduler", False, None)
EULER = SchedulerChoice("EulerDiscreteScheduler", False, None)
EULER_A = SchedulerChoice("EulerAncestralDiscreteScheduler", False, None)
LCM = SchedulerChoice("LCMScheduler", False, None)
SCHEDULERS = {TinyFamily.SD3: FLOW, TinyFamily.FLUX: FLOW, TinyFamily.LCM: LCM}
# Mean absolute difference allowed between a batched image and the same job alone: batched maths round apart.
MAX_GREY_LEVELS = 1.0


@dataclass
class World:
    objects: LocalObjectStore
    engine: DiffusionEngine
    init_keys: list[str]

    def job(self, family: TinyFamily, kind: JobKind, job_id: int, **fields: Any) -> Job:
        values: dict[str, Any] = {"prompt": "a photo of a cat", "steps": 3, "seed": 1234, "tomesd": False}
        values |= {"safety_checker": False, "scheduler": SCHEDULERS.get(family, EULER)}
        if kind is JobKind.IMG2IMG:
            values |= {"init_image_key": self.init_keys[job_id % len(self.init_keys)], "strength": 0.7}
        return make_job(
            family.value, kind, GenerationParams(**(values | fields)), width=SIZE, height=SIZE, job_id=job_id
        )

    def run(self, jobs: list[Job], contexts: dict[int, RecordingContext] | None = None) -> list[EngineOutput]:
        found = contexts if contexts is not None else {job.id: RecordingContext() for job in jobs}
        return self.engine.run(jobs, lambda job: found[job.id])


def _init(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    data_dir = tmp_path_factory.mktemp("batching")
    for family in TinyFamily:
        make_tiny_family_model(data_dir / "models", family.value, family, seed=3)
    objects = LocalObjectStore(data_dir / "objects", "http://test", b"secret", 3600)
    keys = [
        objects.put(make_object_key("uploads", "png", temp=False), png_bytes(_init(seed)), "image/png").key
        for seed in (1, 2)
    ]
    engine = DiffusionEngine(Settings(data_dir=data_dir), objects, max_loaded=1)
    return World(objects, engine, keys)


def _mates(world: World, family: TinyFamily, kind: JobKind, **fields: Any) -> list[Job]:
    """Two jobs that share a batch key but differ in prompt, negative prompt, seed, sample count and init image."""
    first: dict[str, Any] = {"prompt": "a photo of a cat", "seed": 11}
    second: dict[str, Any] = {"prompt": "a red dog running", "seed": 22, "samples": 2}
    if family is not TinyFamily.FLUX:
        first["negative_prompt"], second["negative_prompt"] = "blurry", "ugly"
    return [world.job(family, kind, 1, **(first | fields)), world.job(family, kind, 2, **(second | fields))]


def _assert_alone_equals_batched(
    world: World, jobs: list[Job], contexts: dict[int, RecordingContext] | None = None
) -> list[EngineOutput]:
    batched = world.run(jobs, contexts)
    for job, output in zip(jobs, batched, strict=True):
        [alone] = world.run([job])
        assert output.meta["batch_size"] == len(jobs)
        assert alone.meta["batch_size"] == 1
        assert len(output.images) == len(alone.images) == len(job.output_keys)
        for mine, reference in zip(output.images, alone.images, strict=True):
            difference = np.abs(pixels(mine) - pixels(reference)).mean()
            assert difference <= MAX_GREY_LEVELS, f"job {job.id}: batched differs from alone by {difference:.2f}"
        assert output.meta["seed"] == alone.meta["seed"]
    # The jobs had other prompts and seeds: neither got the other's images.
    assert np.abs(pixels(batched[0].images[0]) - pixels(batched[1].images[0])).mean() > 2
    return batched


@pytest.mark.parametrize("family", list(TinyFamily), ids=str)
def test_batched_jobs_equal_each_job_alone(world: World, family: TinyFamily) -> None:
    if family is not TinyFamily.SDXL_REFINER:  # an img2img-only model
        _assert_alone_equals_batched(world, _mates(world, family, JobKind.TEXT2IMG))
    _assert_alone_equals_batched(world, _mates(world, family, JobKind.IMG2IMG))


def test_ancestral_sampler_clip_skip_and_token_merging_batch_like_alone(world: World) -> None:
    # Per-image noise at every step, CLIP-skip embeddings built per job, tomesd without random merges; and each
    # job hears of its own progress.
    jobs = _mates(world, TinyFamily.SD15, JobKind.TEXT2IMG, scheduler=EULER_A, clip_skip=2, tomesd=True)
    contexts = {job.id: RecordingContext() for job in jobs}
    outputs = _assert_alone_equals_batched(world, jobs, contexts)
    assert {output.meta["tomesd"] for output in outputs} == {"yes"}
    for context in contexts.values():
        assert context.steps[0] == (0, 3) and context.steps[-1] == (3, 3)


def test_a_batch_stops_when_its_context_says_so(world: World) -> None:
    # The worker's context raises only once every job of the batch is cancelled (or the worker must stop).
    jobs = _mates(world, TinyFamily.SD15, JobKind.TEXT2IMG)
    contexts = {job.id: RecordingContext(cancel_at=1 if job.id == 2 else None) for job in jobs}
    with pytest.raises(JobCancelled):
        world.run(jobs, contexts)
    assert max(done for done, _ in contexts[2].steps) == 1


def test_jobs_with_other_shared_settings_run_apart(world: World) -> None:
    jobs = [
        world.job(TinyFamily.SD15, JobKind.TEXT2IMG, 1),
        world.job(TinyFamily.SD15, JobKind.TEXT2IMG, 2, guidance_scale=3.0),
        world.job(TinyFamily.SD15, JobKind.TEXT2IMG, 3, seed=99),
    ]
    outputs = world.run(jobs)
    assert [output.meta["batch_size"] for output in outputs] == [2, 1, 2]
