"""Upscale batching through the worker: a real job store (SQLite) and the upscale engine on seeded Real-ESRGAN
weights claim same-size upscales as one batch, cancel one job of it without touching the others, and fail only
the job whose input is unusable."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from sdserver.engines.upscale.engine import UpscaleEngine, weights_folder
from sdserver.engines.upscale.tiny import write_official_weights
from sdserver.job_params import SuperResolutionParams
from sdserver.jobs import Job, JobKind, JobSpec, JobStatus
from sdserver.objects.base import make_object_key
from sdserver.worker.batching import CPU_MAX_BATCH, worker_max_batch
from tests.engines.upscale.test_tiling import smooth_image
from tests.worker.batch_harness import CancelAfterFirstStep, QuietSteps, RunningWorker
from tests.worker.test_loop import Harness, close_harness, make_settings, open_harness

MODEL = "realesr-general-x4v3"
SIDE = 64
# A 64×64 input in 32 px tiles: 4 tiles, so 4 progress steps per job.
TILES = 4


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    built = open_harness(make_settings(tmp_path / "data", engines=["upscale"], job_lease_s=5.0))
    write_official_weights(weights_folder(built.settings), MODEL, "params")
    yield built
    close_harness(built)


def engine_for(harness: Harness) -> UpscaleEngine:
    return UpscaleEngine(harness.settings, harness.objects, precision="fp32", tile=32)


def put_input(harness: Harness, seed: int) -> str:
    buffer = io.BytesIO()
    smooth_image(SIDE, SIDE, seed=seed).save(buffer, "PNG")
    return harness.objects.put(make_object_key("uploads", "png", temp=False), buffer.getvalue(), "image/png").key


def submit(harness: Harness, input_key: str, scale: float = 2.0) -> Job:
    keys = (make_object_key("outputs", "png", temp=False),)
    spec = JobSpec(
        owner_key_id=1, kind=JobKind.SUPER_RESOLUTION, model_id=MODEL,
        params=SuperResolutionParams(input_key=input_key, scale=scale), output_keys=keys,
        future_links=tuple(harness.objects.url_for(key) for key in keys), width=SIDE, height=SIDE,
    )  # fmt: skip
    return harness.store.submit(spec)


def alone_png(engine: UpscaleEngine, job: Job) -> bytes:
    [output] = engine.run([job], lambda _job: QuietSteps())
    return output.images[0]


def test_queued_upscales_run_as_one_batch_and_each_gets_its_own_image(harness: Harness) -> None:
    jobs = [submit(harness, put_input(harness, seed), scale) for seed, scale in ((0, 2.0), (1, 3.0), (2, 4.0))]
    engine = engine_for(harness)
    with RunningWorker(harness, engine, max_batch=4):
        done = [harness.wait_terminal(job.id, timeout=60) for job in jobs]
    assert all(job.status is JobStatus.SUCCEEDED for job in done), [job.error_message for job in done]
    assert [job.result["batch_size"] for job in done] == [3, 3, 3]
    assert all(job.progress_step == job.progress_total == TILES for job in done)
    for job in done:
        assert harness.objects.get(job.output_keys[0]) == alone_png(engine, job)


def test_a_cancel_inside_an_upscale_batch_cancels_only_that_job(harness: Harness) -> None:
    jobs = [submit(harness, put_input(harness, seed)) for seed in range(3)]
    victim = jobs[1]
    engine = CancelAfterFirstStep(engine_for(harness), harness, victim.id)
    with RunningWorker(harness, engine, max_batch=4):
        done = [harness.wait_terminal(job.id, timeout=60) for job in jobs]
    assert [job.status for job in done] == [JobStatus.SUCCEEDED, JobStatus.CANCELLED, JobStatus.SUCCEEDED]
    assert done[1].progress_step < TILES
    assert not harness.objects.exists(victim.output_keys[0])
    for job in (done[0], done[2]):
        assert job.result["batch_size"] == 3
        assert harness.objects.get(job.output_keys[0]) == alone_png(engine.inner, job)


def test_one_upscale_with_an_unusable_input_fails_alone(harness: Harness) -> None:
    good = [submit(harness, put_input(harness, seed)) for seed in range(2)]
    bad = submit(harness, "uploads/gone.png")
    with RunningWorker(harness, engine_for(harness), max_batch=4):
        done = [harness.wait_terminal(job.id, timeout=60) for job in [*good, bad]]
    assert [job.status for job in done] == [JobStatus.SUCCEEDED, JobStatus.SUCCEEDED, JobStatus.FAILED]
    assert done[2].error_code == "image_not_found"
    # Its mates reran alone after the batch failed on its input.
    assert [job.result["batch_size"] for job in done[:2]] == [1, 1]
    assert all(Image.open(io.BytesIO(harness.objects.get(job.output_keys[0]))).size == (128, 128) for job in done[:2])


def test_an_upscale_worker_gets_a_batch_size(harness: Harness) -> None:
    engine = engine_for(harness)
    assert worker_max_batch(0, [engine]) == CPU_MAX_BATCH
    assert worker_max_batch(1, [engine]) == 1
