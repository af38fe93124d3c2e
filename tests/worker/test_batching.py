"""Cross-request batching through the worker: a real job store (SQLite) and the diffusion engine on a tiny model
claim batch-mates, wait the batch window for late ones, report `meta.batch_size`, and cancel one job of a batch
without touching the others."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sdserver.catalog.schedulers import plan_scheduler
from sdserver.engines.diffusion.engine import DiffusionEngine
from sdserver.job_params import GenerationParams
from sdserver.jobs import Job, JobKind, JobSpec, JobStatus
from sdserver.objects.base import make_object_key
from sdserver.worker.batching import CPU_MAX_BATCH, resolve_max_batch, worker_max_batch
from tests.support.tiny_sd import make_tiny_model, pixels, png_bytes
from tests.worker.batch_harness import CancelAfterFirstStep, QuietSteps, RunningWorker
from tests.worker.test_loop import Harness, close_harness, make_settings, open_harness

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]

MODEL = "tiny-batch"
STEPS = 4
GIB = 1024**3


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    built = open_harness(make_settings(tmp_path / "data", engines=["diffusers"], job_lease_s=5.0))
    make_tiny_model(built.settings.data_dir / "models", MODEL)
    yield built
    close_harness(built)


def submit(harness: Harness, index: int, kind: JobKind = JobKind.TEXT2IMG, **params: Any) -> Job:
    keys = (make_object_key("outputs", "png", temp=False),)
    values: dict[str, Any] = {"prompt": f"a photo of a cat number {index}", "seed": 100 + index, "steps": STEPS}
    values |= {
        "tomesd": False,
        "safety_checker": False,
        "scheduler": plan_scheduler("EulerDiscreteScheduler", False, None),
    }
    spec = JobSpec(
        owner_key_id=1,
        kind=kind,
        model_id=MODEL,
        params=GenerationParams(**(values | params)),
        output_keys=keys,
        future_links=tuple(harness.objects.url_for(key) for key in keys),
        width=64,
        height=64,
        steps=STEPS,
    )
    return harness.store.submit(spec)


def engine_for(harness: Harness) -> DiffusionEngine:
    return DiffusionEngine(harness.settings, harness.objects)


def test_queued_mates_run_as_one_batch_and_each_gets_its_own_images(harness: Harness) -> None:
    jobs = [submit(harness, index) for index in range(3)]
    loner = submit(harness, 9, guidance_scale=2.0)
    engine = engine_for(harness)
    with RunningWorker(harness, engine, max_batch=4, window_s=0.0):
        done = [harness.wait_terminal(job.id, timeout=120) for job in [*jobs, loner]]
    assert all(job.status is JobStatus.SUCCEEDED for job in done), [job.error_message for job in done]
    assert [job.result["batch_size"] for job in done] == [3, 3, 3, 1]
    assert all(job.progress_step == job.progress_total == STEPS for job in done)
    # Each stored image is its own job's: the same job alone makes the same picture.
    for job in done[:3]:
        [alone] = engine.run([job], lambda _job: QuietSteps())
        stored = harness.objects.get(job.output_keys[0])
        assert np.abs(pixels(stored) - pixels(alone.images[0])).mean() <= 1.0


def test_a_job_arriving_within_the_window_joins_the_batch(harness: Harness) -> None:
    first = submit(harness, 0)
    with RunningWorker(harness, engine_for(harness), max_batch=4, window_s=5.0):
        harness.wait_for(first.id, lambda job: job.status is JobStatus.RUNNING, timeout=60)
        late = submit(harness, 1)
        done = [harness.wait_terminal(job.id, timeout=120) for job in (first, late)]
    assert [job.result["batch_size"] for job in done] == [2, 2]


def test_a_batch_window_longer_than_the_lease_keeps_the_jobs_in_hand(tmp_path: Path) -> None:
    built = open_harness(make_settings(tmp_path / "data", engines=["diffusers"], job_lease_s=1.0))
    try:
        make_tiny_model(built.settings.data_dir / "models", MODEL)
        first = submit(built, 0)
        with RunningWorker(built, engine_for(built), max_batch=4, window_s=3.0):
            built.wait_for(first.id, lambda job: job.status is JobStatus.RUNNING, timeout=60)
            time.sleep(2.0)  # twice the lease, inside the window
            late = submit(built, 1)
            done = [built.wait_terminal(job.id, timeout=120) for job in (first, late)]
        assert [job.status for job in done] == [JobStatus.SUCCEEDED] * 2
        # Never lost and run again: one attempt, one shared batch.
        assert [job.attempts for job in done] == [1, 1]
        assert [job.result["batch_size"] for job in done] == [2, 2]
    finally:
        close_harness(built)


def test_without_batching_each_job_runs_alone(harness: Harness) -> None:
    jobs = [submit(harness, index) for index in range(2)]
    with RunningWorker(harness, engine_for(harness), max_batch=1, window_s=0.0):
        done = [harness.wait_terminal(job.id, timeout=120) for job in jobs]
    assert [job.result["batch_size"] for job in done] == [1, 1]


def test_a_cancel_inside_a_batch_cancels_only_that_job(harness: Harness) -> None:
    jobs = [submit(harness, index) for index in range(3)]
    victim = jobs[1]
    engine = CancelAfterFirstStep(engine_for(harness), harness, victim.id)
    with RunningWorker(harness, engine, max_batch=4, window_s=0.0):
        done = [harness.wait_terminal(job.id, timeout=120) for job in jobs]
    assert [job.status for job in done] == [JobStatus.SUCCEEDED, JobStatus.CANCELLED, JobStatus.SUCCEEDED]
    cancelled = done[1]
    # It left at the step the cancel came in, before its mates finished, and wrote no image.
    assert cancelled.progress_step < STEPS
    assert cancelled.finished_at is not None and done[0].finished_at is not None
    assert cancelled.finished_at < done[0].finished_at
    assert not harness.objects.exists(victim.output_keys[0])
    for job in (done[0], done[2]):
        assert job.result["batch_size"] == 3
        [alone] = engine.inner.run([job], lambda _job: QuietSteps())
        assert np.abs(pixels(harness.objects.get(job.output_keys[0])) - pixels(alone.images[0])).mean() <= 1.0


def test_one_job_with_an_unusable_input_fails_alone(harness: Harness) -> None:
    picture = Image.new("RGB", (64, 64), (200, 40, 40))
    init = harness.objects.put(make_object_key("uploads", "png", temp=False), png_bytes(picture), "image/png").key
    good = [submit(harness, index, JobKind.IMG2IMG, init_image_key=init) for index in range(2)]
    bad = submit(harness, 5, JobKind.IMG2IMG, init_image_key="uploads/gone.png")
    with RunningWorker(harness, engine_for(harness), max_batch=4, window_s=0.0):
        done = [harness.wait_terminal(job.id, timeout=120) for job in [*good, bad]]
    assert [job.status for job in done] == [JobStatus.SUCCEEDED, JobStatus.SUCCEEDED, JobStatus.FAILED]
    assert done[2].error_code == "image_not_found"
    # Its mates reran alone after the batch failed on its input.
    assert [job.result["batch_size"] for job in done[:2]] == [1, 1]


def test_batch_size_setting_and_automatic_default() -> None:
    assert resolve_max_batch(6, "cuda:0", 80 * GIB) == 6
    assert resolve_max_batch(0, "cpu", 500 * GIB) == CPU_MAX_BATCH
    assert resolve_max_batch(0, "cuda:0", 140 * GIB) == 16
    assert resolve_max_batch(0, "cuda:0", 16 * GIB) == 4
    assert resolve_max_batch(0, "cuda:0", 4 * GIB) == 1
    assert resolve_max_batch(0, "cuda:0", None) == CPU_MAX_BATCH


def test_only_an_engine_that_batches_gets_a_batch_size(harness: Harness) -> None:
    from sdserver.engines.fake import FakeEngine

    assert worker_max_batch(0, [FakeEngine()]) == 1
    assert worker_max_batch(0, [FakeEngine(), engine_for(harness)]) == CPU_MAX_BATCH
    assert worker_max_batch(3, [engine_for(harness)]) == 3
