"""The deterministic fake engine (`engines=["test"]`): one model id per behaviour the worker must survive."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Final

from PIL import Image, ImageDraw

from sdserver.engines.base import DeviceFailure, DeviceOutOfMemory, EngineOutput, StepContext
from sdserver.job_params import (
    FAKE_DEFAULT_STEP_DELAY_S,
    FAKE_DEFAULT_STEPS,
    ControlNetParams,
    FakeParams,
    GenerationParams,
    dump_params,
)
from sdserver.jobs import Job, JobKind

OK: Final = "test-ok"
SLOW: Final = "test-slow"
RAISE: Final = "test-raise"
OOM: Final = "test-oom"
HANG: Final = "test-hang"
CRASH: Final = "test-crash"
TEST_MODELS: Final = frozenset({OK, SLOW, RAISE, OOM, HANG, CRASH})

# Every kind that makes images; model loads belong to the real loader engine, even for a `test-` id.
IMAGE_KINDS: Final = frozenset(JobKind) - {JobKind.MODEL_LOAD}
DEFAULT_SIZE: Final = 64
# How often test-hang looks for a cancel: often enough that a stop is seen at once.
HANG_TICK_S: Final = 0.05


class FakeEngine:
    """Fakes over mocks: `test-ok` makes PNGs derived only from the job's params, seed, size and output index;
    the other model ids each play one failure mode (slow, raise, out of memory, hang, device crash)."""

    __test__ = False  # not a pytest test class, despite the name
    name: str = "test"

    def __init__(self) -> None:
        # Like a real engine's cache of one: the model last run counts as loaded, for claim affinity.
        self._held: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def kinds(self) -> Collection[JobKind]:
        return IMAGE_KINDS

    def handles(self, job: Job) -> bool:
        return job.kind in IMAGE_KINDS and job.model_id in TEST_MODELS

    def models(self) -> Collection[str] | None:
        return TEST_MODELS

    def held_models(self) -> Collection[str]:
        with self._lock:
            return self._held

    def clear(self) -> None:
        with self._lock:
            self._held = frozenset()

    def run(self, jobs: Sequence[Job], ctx: Callable[[Job], StepContext]) -> list[EngineOutput]:
        if not jobs:
            return []
        model_id = jobs[0].model_id
        with self._lock:
            self._held = frozenset({model_id})
        total = job_steps(jobs[0])
        if model_id == OOM:
            raise DeviceOutOfMemory("test-oom: simulated out of memory (tried to allocate 1.00 GiB)")
        if model_id == CRASH:
            raise DeviceFailure("test-crash: simulated unrecoverable device error")
        if model_id == HANG:
            _hang(jobs, ctx, total)
        delay = _step_delay_s(jobs[0]) if model_id == SLOW else 0.0
        for done in range(1, total + 1):
            if delay:
                time.sleep(delay)
            for job in jobs:
                ctx(job).step(done, total)
            if model_id == RAISE:
                raise RuntimeError("test-raise: the engine failed on purpose")
        return [render_output(job) for job in jobs]


def _hang(jobs: Sequence[Job], ctx: Callable[[Job], StepContext], total: int) -> None:
    """Never returns: only a JobCancelled from the context (or a kill) ends it."""
    while True:
        for job in jobs:
            ctx(job).step(0, total)
        time.sleep(HANG_TICK_S)


def job_steps(job: Job) -> int:
    params = _stepped(job)
    return (params.steps if params is not None else 0) or job.steps or FAKE_DEFAULT_STEPS


def job_seed(job: Job) -> int:
    """The seed asked for, else one derived from the job id (so a re-run of the job makes the same images)."""
    params = _stepped(job)
    if params is not None and params.seed is not None and params.seed >= 0:
        return params.seed
    return int.from_bytes(hashlib.sha256(f"job-seed:{job.id}".encode()).digest()[:4], "big")


def _stepped(job: Job) -> GenerationParams | FakeParams | None:
    """The params that carry steps and a seed (super resolution has neither)."""
    params = job.params
    if isinstance(params, ControlNetParams):
        return params.generation
    return params if isinstance(params, GenerationParams | FakeParams) else None


def _step_delay_s(job: Job) -> float:
    return job.params.step_delay_s if isinstance(job.params, FakeParams) else FAKE_DEFAULT_STEP_DELAY_S


def render_output(job: Job) -> EngineOutput:
    """What `test-ok` returns for a job: the same bytes every time for the same job."""
    seed = job_seed(job)
    width, height = job.width or DEFAULT_SIZE, job.height or DEFAULT_SIZE
    inputs = dump_params(job.params)
    images = [render_png(inputs, seed, index, width, height) for index in range(len(job.output_keys))]
    return EngineOutput(images=images, meta={"seed": seed, "engine": FakeEngine.name})


def render_png(params: dict[str, Any], seed: int, index: int, width: int, height: int) -> bytes:
    """A solid colour with a few rectangles on it, all chosen by a hash of the inputs."""
    material = json.dumps({"params": params, "seed": seed, "index": index}, sort_keys=True, default=str)
    digest = hashlib.sha256(material.encode()).digest()
    image = Image.new("RGB", (width, height), tuple(digest[0:3]))
    draw = ImageDraw.Draw(image)
    for n in range(4):
        chunk = digest[3 + n * 7 : 10 + n * 7]
        x0, y0 = chunk[0] * width // 256, chunk[1] * height // 256
        x1, y1 = x0 + 1 + chunk[2] * width // 512, y0 + 1 + chunk[3] * height // 512
        draw.rectangle((x0, y0, x1, y1), fill=tuple(chunk[4:7]))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
