"""The deterministic test engine: same input, same bytes; one model id per failure mode; the engine factory."""

from __future__ import annotations

import io
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sdserver.config import Settings
from sdserver.engines.base import DeviceFailure, DeviceOutOfMemory, JobCancelled
from sdserver.engines.factory import build_engines
from sdserver.engines.fake import TEST_MODELS, FakeEngine, job_seed
from sdserver.job_params import FakeParams
from sdserver.jobs import Job, JobKind, JobStatus


def make_job(model_id: str = "test-ok", *, job_id: int = 1, samples: int = 1, **params: Any) -> Job:
    keys = tuple(f"outputs/2025/01/01/{job_id:016x}{n:016x}.png" for n in range(samples))
    return Job(
        id=job_id,
        owner_key_id=1,
        kind=JobKind.TEXT2IMG,
        model_id=model_id,
        params=FakeParams(**{"prompt": "a red fox", **params}),
        output_keys=keys,
        future_links=tuple(f"http://sd.test/files/{key}" for key in keys),
        width=0,
        height=0,
        steps=0,
        scheduler="",
        status=JobStatus.RUNNING,
        attempts=1,
        max_attempts=3,
        created_at=datetime.now(UTC),
    )


class RecordingContext:
    """Records steps; raises JobCancelled once `cancel_after` calls have been made."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.steps: list[tuple[int, int]] = []
        self.cancel_after = cancel_after

    def step(self, done: int, total: int) -> None:
        self.steps.append((done, total))
        if self.cancel_after is not None and len(self.steps) >= self.cancel_after:
            raise JobCancelled("cancel requested")


def run_one(job: Job, ctx: RecordingContext | None = None) -> list[bytes]:
    context = ctx or RecordingContext()
    [output] = FakeEngine().run([job], lambda _job: context)
    return output.images


def test_same_params_give_identical_png_bytes() -> None:
    first = run_one(make_job(seed=42, samples=2))
    second = run_one(make_job(seed=42, samples=2))
    assert first == second
    assert first[0] != first[1], "each output index gets its own image"


@pytest.mark.parametrize(
    "change",
    [{"seed": 43}, {"prompt": "a blue fox"}],
    ids=["other-seed", "other-prompt"],
)
def test_different_inputs_give_different_bytes(change: dict[str, Any]) -> None:
    assert run_one(make_job(seed=42)) != run_one(make_job(**{"seed": 42, **change}))


def test_images_are_pngs_of_the_job_size_defaulting_to_64() -> None:
    [default] = run_one(make_job(seed=1))
    [sized] = run_one(replace(make_job(seed=1), width=96, height=48))
    for data, size in ((default, (64, 64)), (sized, (96, 48))):
        image = Image.open(io.BytesIO(data))
        assert (image.format, image.size) == ("PNG", size)


def test_meta_reports_the_seed_used_and_derives_one_from_the_job_id() -> None:
    engine = FakeEngine()
    [given] = engine.run([make_job(seed=7)], lambda _job: RecordingContext())
    assert given.meta == {"seed": 7, "engine": "test"}
    [derived] = engine.run([make_job(job_id=5)], lambda _job: RecordingContext())
    assert derived.meta["seed"] == job_seed(make_job(job_id=5)) != job_seed(make_job(job_id=6))
    assert run_one(make_job(job_id=5)) == run_one(make_job(job_id=5))


def test_every_step_is_reported() -> None:
    ctx = RecordingContext()
    run_one(make_job(steps=6), ctx)
    assert ctx.steps == [(n, 6) for n in range(1, 7)]


def test_slow_sleeps_per_step() -> None:
    ctx = RecordingContext()
    started = time.monotonic()
    run_one(make_job("test-slow", steps=3, step_delay_s=0.05), ctx)
    assert time.monotonic() - started >= 0.15
    assert ctx.steps == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("model_id", ["test-slow", "test-hang"])
def test_cancel_from_the_context_stops_the_engine(model_id: str) -> None:
    ctx = RecordingContext(cancel_after=2)
    with pytest.raises(JobCancelled):
        run_one(make_job(model_id, step_delay_s=0.01), ctx)
    assert len(ctx.steps) == 2


@pytest.mark.parametrize(
    ("model_id", "error"),
    [("test-raise", RuntimeError), ("test-oom", DeviceOutOfMemory), ("test-crash", DeviceFailure)],
    ids=["raise", "oom", "crash"],
)
def test_failure_models_raise_their_error(model_id: str, error: type[Exception]) -> None:
    with pytest.raises(error, match=model_id):
        run_one(make_job(model_id))


def test_a_batch_gets_one_output_per_job_in_order() -> None:
    jobs = [make_job(job_id=1, seed=1, samples=2), make_job(job_id=2, seed=2, samples=3)]
    contexts = {job.id: RecordingContext() for job in jobs}
    outputs = FakeEngine().run(jobs, lambda job: contexts[job.id])
    assert [len(output.images) for output in outputs] == [2, 3]
    assert outputs[0].images == run_one(jobs[0]) and outputs[1].images == run_one(jobs[1])
    assert all(len(ctx.steps) == 4 for ctx in contexts.values())


def test_claims_only_test_models_and_holds_the_last_one_run() -> None:
    engine = FakeEngine()
    assert engine.models() == TEST_MODELS
    assert set(engine.kinds()) == set(JobKind) - {JobKind.MODEL_LOAD}
    assert engine.handles(make_job("test-slow")) and not engine.handles(make_job("sd-1.5"))
    assert not engine.held_models()
    engine.run([make_job("test-ok")], lambda _job: RecordingContext())
    assert set(engine.held_models()) == {"test-ok"}
    engine.clear()
    assert not engine.held_models()


def test_build_engines_makes_the_test_engine() -> None:
    [engine] = build_engines(Settings(engines=["test", "test"]))
    assert isinstance(engine, FakeEngine)


def test_build_engines_builds_each_named_engine_once_in_order(tmp_path: Path) -> None:
    from sdserver.objects.local import LocalObjectStore

    objects = LocalObjectStore(tmp_path / "objects", "http://127.0.0.1:1", b"s" * 32, 3600)
    settings = Settings(data_dir=tmp_path, engines=["diffusers", "test", "upscale", "test"])
    engines = build_engines(settings, objects)
    assert [engine.name for engine in engines] == ["diffusers", "test", "upscale"]


def test_device_engines_need_the_object_store() -> None:
    with pytest.raises(ValueError, match="needs the object store"):
        build_engines(Settings(engines=["upscale"]))


def test_build_engines_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown engine 'dall-e'"):
        build_engines(Settings(engines=["dall-e"]))
