"""UpscaleEngine batches: tiles of several jobs share forward passes, and each job gets the image, meta and progress
it gets alone; a job that leaves the batch is skipped without touching the others; a bad input fails the batch
before any work (the worker then runs each job alone)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from torch import Tensor

from sdserver.engines.base import DeviceOutOfMemory, EngineOutput, JobCancelled, JobFailed
from sdserver.engines.upscale.engine import UpscaleEngine
from sdserver.engines.upscale.tiny import write_official_weights
from sdserver.errors import JobErrorCode
from sdserver.jobs import Job
from sdserver.objects.base import make_object_key
from tests.engines.upscale.test_engine import COMPACT, Deployment, Steps, make_deployment
from tests.engines.upscale.test_tiling import smooth_image

UNSHUFFLE = "RealESRGAN_x2plus"


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    return make_deployment(tmp_path)


@dataclass
class Forwards:
    """The batch sizes of the network's forward passes."""

    sizes: list[int]


@pytest.fixture
def forwards(deployment: Deployment) -> Iterator[Forwards]:
    seen = Forwards([])
    upscaler = deployment.engine.upscaler(COMPACT)
    real = upscaler.forward

    def counting(batch: Tensor) -> Tensor:
        seen.sizes.append(batch.shape[0])
        return real(batch)

    upscaler.forward = counting  # type: ignore[method-assign]
    yield seen


class Leaving(Steps):
    """A job's context whose job leaves the batch (cancelled while its mates run on) after `leave_after` steps."""

    def __init__(self, leave_after: int) -> None:
        super().__init__()
        self.leave_after = leave_after

    @property
    def stopped(self) -> bool:
        return len(self.seen) >= self.leave_after


def jobs_for(deployment: Deployment, *inputs: tuple[Image.Image, float], model: str = COMPACT) -> list[Job]:
    return [
        replace(deployment.job(model, deployment.put_input(image), scale), id=index + 1)
        for index, (image, scale) in enumerate(inputs)
    ]


def pixels(output: EngineOutput) -> npt.NDArray[np.float64]:
    [png] = output.images
    return np.asarray(Image.open(io.BytesIO(png)), dtype=np.float64)


def run_alone(engine: UpscaleEngine, job: Job) -> tuple[EngineOutput, Steps]:
    steps = Steps()
    [output] = engine.run([job], lambda _job: steps)
    return output, steps


def test_a_batch_gives_each_job_its_alone_image_meta_and_progress(deployment: Deployment) -> None:
    # Same size in RGB and RGBA at different scales, and a greyscale image of another size (other tile shape).
    translucent = smooth_image(64, 40, seed=1).convert("RGBA")
    translucent.putalpha(smooth_image(64, 40, seed=4).convert("L"))
    jobs = jobs_for(
        deployment, (smooth_image(64, 40), 2.5), (translucent, 4.0), (smooth_image(40, 30, seed=2).convert("L"), 2.0)
    )
    contexts = {job.id: Steps() for job in jobs}
    batched = deployment.engine.run(jobs, lambda job: contexts[job.id])
    for job, output in zip(jobs, batched, strict=True):
        alone, steps = run_alone(deployment.engine, job)
        assert output.meta == alone.meta | {"batch_size": 3}
        assert alone.meta["batch_size"] == 1
        # Same tiles, same network: fp32 batched maths gives the very same bytes here.
        assert np.abs(pixels(output) - pixels(alone)).max() <= 1.0
        assert output.images == alone.images
        assert contexts[job.id].seen[-1] == steps.seen[-1]
        assert [done for done, _ in contexts[job.id].seen] == sorted({done for done, _ in contexts[job.id].seen})
    assert [output.meta["output_size"] for output in batched] == [[160, 100], [256, 160], [80, 60]]


def test_tiles_of_the_jobs_share_forward_passes(deployment: Deployment, forwards: Forwards) -> None:
    jobs = jobs_for(deployment, *[(smooth_image(64, 64, seed=seed), 2.0) for seed in range(3)])
    deployment.engine.run(jobs, lambda _job: Steps())
    # 4 tiles each, one tile per job and forward pass (tile_batch 1): 4 passes of 3 instead of 12 of 1.
    assert forwards.sizes == [3, 3, 3, 3]


def test_a_pixel_unshuffle_network_batches_odd_sizes_exactly(deployment: Deployment) -> None:
    write_official_weights(deployment.folder, UNSHUFFLE, "params_ema")
    jobs = jobs_for(deployment, (smooth_image(37, 21), 2.0), (smooth_image(37, 21, seed=3), 1.5), model=UNSHUFFLE)
    batched = deployment.engine.run(jobs, lambda _job: Steps())
    for job, output in zip(jobs, batched, strict=True):
        alone, _ = run_alone(deployment.engine, job)
        assert np.abs(pixels(output) - pixels(alone)).mean() <= 1.0
        assert output.meta == alone.meta | {"batch_size": 2}


def test_a_forward_pass_out_of_memory_is_retried_in_halves(deployment: Deployment) -> None:
    jobs = jobs_for(deployment, *[(smooth_image(64, 64, seed=seed), 2.0) for seed in range(4)])
    upscaler = deployment.engine.upscaler(COMPACT)
    real, sizes = upscaler.forward, []

    def tight(batch: Tensor) -> Tensor:
        sizes.append(batch.shape[0])
        if batch.shape[0] > 1 and sum(size > 1 for size in sizes) <= 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(batch)

    upscaler.forward = tight  # type: ignore[method-assign]
    batched = deployment.engine.run(jobs, lambda _job: Steps())
    # 4 tiles fail, then 2 (half) fail: one tile per pass from then on, all 16 of them.
    assert sizes == [4, 2, *[1] * 16]
    upscaler.forward = real  # type: ignore[method-assign]
    for job, output in zip(jobs, batched, strict=True):
        assert output.images == run_alone(deployment.engine, job)[0].images


def test_a_single_tile_out_of_memory_hands_the_batch_back(deployment: Deployment) -> None:
    jobs = jobs_for(deployment, *[(smooth_image(32, 32, seed=seed), 2.0) for seed in range(2)])
    upscaler = deployment.engine.upscaler(COMPACT)

    def full(batch: Tensor) -> Tensor:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    upscaler.forward = full  # type: ignore[method-assign]
    with pytest.raises(DeviceOutOfMemory, match="a batch of 2 upscales"):
        deployment.engine.run(jobs, lambda _job: Steps())


def test_a_job_leaving_the_batch_is_skipped_and_the_others_are_untouched(
    deployment: Deployment, forwards: Forwards
) -> None:
    jobs = jobs_for(deployment, *[(smooth_image(64, 64, seed=seed), 2.0) for seed in range(3)])
    victim = Leaving(leave_after=1)
    contexts: dict[int, Any] = {1: Steps(), 2: victim, 3: Steps()}
    batched = deployment.engine.run(jobs, lambda job: contexts[job.id])
    assert batched[1] == EngineOutput(images=[], meta={})
    assert victim.seen == [(1, 4)]
    # Its three remaining tiles never ran: its mates' eight tiles filled the passes.
    assert forwards.sizes == [3, 3, 3]
    for index in (0, 2):
        alone, _ = run_alone(deployment.engine, jobs[index])
        assert batched[index].images == alone.images and batched[index].meta["batch_size"] == 3


def test_a_cancel_of_the_whole_batch_stops_it(deployment: Deployment, forwards: Forwards) -> None:
    jobs = jobs_for(deployment, *[(smooth_image(64, 64, seed=seed), 2.0) for seed in range(2)])
    with pytest.raises(JobCancelled):
        deployment.engine.run(jobs, lambda _job: Steps(cancel_after=1))
    assert forwards.sizes == [2]


def test_an_unusable_input_fails_the_batch_before_any_work(deployment: Deployment, forwards: Forwards) -> None:
    [good] = jobs_for(deployment, (smooth_image(32, 32), 2.0))
    missing = replace(deployment.job(COMPACT, make_object_key("uploads", "png", temp=False), 2.0), id=2)
    with pytest.raises(JobFailed) as failed:
        deployment.engine.run([good, missing], lambda _job: Steps())
    assert failed.value.code is JobErrorCode.IMAGE_NOT_FOUND
    assert forwards.sizes == []


def test_face_enhance_without_restorer_fails_the_batch_before_any_work(
    deployment: Deployment, forwards: Forwards
) -> None:
    [plain] = jobs_for(deployment, (smooth_image(32, 32), 2.0))
    wanting = replace(deployment.job(COMPACT, deployment.put_input(smooth_image(32, 32)), 2.0, face_enhance=True), id=2)
    with pytest.raises(JobFailed) as failed:
        deployment.engine.run([plain, wanting], lambda _job: Steps())
    assert failed.value.code is JobErrorCode.FACE_ENHANCE_UNAVAILABLE
    assert forwards.sizes == []


def test_jobs_of_different_models_run_apart_in_one_call(deployment: Deployment) -> None:
    write_official_weights(deployment.folder, UNSHUFFLE, "params_ema")
    first, second = jobs_for(deployment, (smooth_image(24, 24), 2.0), (smooth_image(24, 24, seed=1), 2.0))
    [other] = jobs_for(deployment, (smooth_image(24, 24, seed=2), 2.0), model=UNSHUFFLE)
    other = replace(other, id=3)
    outputs = deployment.engine.run([first, other, second], lambda _job: Steps())
    assert [output.meta["batch_size"] for output in outputs] == [2, 1, 2]
    assert [output.meta["model_id"] for output in outputs] == [COMPACT, UNSHUFFLE, COMPACT]


def test_only_real_upscale_jobs_are_batchable(deployment: Deployment) -> None:
    from sdserver.job_params import FakeParams

    [job] = jobs_for(deployment, (smooth_image(8, 8), 2.0))
    assert deployment.engine.batchable(job)
    assert not deployment.engine.batchable(replace(job, params=FakeParams()))
    assert deployment.engine.placement.precision == "fp32"
