"""The seam between the worker loop and the engines that make images, and the engine factory for `settings.engines`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sdserver.jobs import Job, JobKind

if TYPE_CHECKING:
    from sdserver.config import Settings
    from sdserver.storage import ObjectStore

log = logging.getLogger(__name__)

DIFFUSION_ENGINE = "diffusers"
UPSCALE_ENGINE = "upscale"
MODELS_ENGINE = "models"


class JobCancelled(Exception):
    """Raised from `StepContext.step` when the job must stop: cancel requested, lease lost, or worker stopping."""


class DeviceOutOfMemory(Exception):
    """The device ran out of memory on this job. Engines raise it after freeing what they can; the worker lives on."""


class DeviceFailure(Exception):
    """The device is in a state the process cannot recover from: the job fails and the worker exits."""


class JobFailed(Exception):
    """An engine's explained refusal of a job (missing weights, unusable input): fails the job with this code
    and message, which the client sees; the worker goes on."""

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class EngineOutput:
    """What one job produced: encoded PNG bytes, one per output key, and additions to the reply's `meta`."""

    images: list[bytes]
    meta: dict[str, Any]


class StepContext(Protocol):
    def step(self, done: int, total: int) -> None:
        """Report progress; raises JobCancelled when the engine must stop (call it at least once per step)."""
        ...


class Engine(Protocol):
    """Makes images for jobs. `kinds()` and `models()` are what the worker claims for it, so together they
    must describe exactly the jobs `handles` accepts."""

    name: str

    def kinds(self) -> Collection[JobKind]: ...
    def handles(self, job: Job) -> bool: ...
    def models(self) -> Collection[str] | None: ...

    def held_models(self) -> Collection[str]:
        """Models loaded now (claim affinity)."""
        ...

    def run(self, jobs: Sequence[Job], ctx: Callable[[Job], StepContext]) -> list[EngineOutput]:
        """Run a batch of jobs that share a batch signature; one output per job, in order."""
        ...

    def clear(self) -> None:
        """Drop loaded models."""
        ...


def build_engines(settings: Settings, objects: ObjectStore | None = None) -> list[Engine]:
    """The engines `settings.engines` names, in that order. Engines that read job inputs get the object store."""
    # Imported here: engine modules import this one, and heavy engines must load only when named.
    from sdserver.worker.test_engine import TestEngine

    engines: list[Engine] = []
    seen: set[str] = set()
    for name in settings.engines:
        if name in seen:
            continue
        seen.add(name)
        if name == TestEngine.name:
            engines.append(TestEngine())
        elif name in (UPSCALE_ENGINE, DIFFUSION_ENGINE):
            engines.append(_device_engine(name, settings, objects))
        elif name == MODELS_ENGINE:
            from sdserver.worker.model_loader import ModelLoaderEngine

            engines.append(ModelLoaderEngine(settings))
        else:
            known = ", ".join(sorted({DIFFUSION_ENGINE, UPSCALE_ENGINE, MODELS_ENGINE, TestEngine.name}))
            raise ValueError(f"engines: unknown engine {name!r}; known engines are {known}")
    return engines


def _device_engine(name: str, settings: Settings, objects: ObjectStore | None) -> Engine:
    # torch loads only in workers that run these engines, never in the API process.
    if objects is None:
        raise ValueError(f"the {name} engine needs the object store to read its input images")
    if name == UPSCALE_ENGINE:
        from sdserver.engines.upscale.engine import UpscaleEngine

        return UpscaleEngine(settings, objects, precision=settings.upscale_precision)
    from sdserver.engines.diffusion.engine import DiffusionEngine

    return DiffusionEngine(
        settings, objects, max_loaded=settings.diffusion_max_loaded, precision=settings.diffusion_precision
    )
