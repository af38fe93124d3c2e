"""The engine interface: what the worker loop asks of an engine, and the outcomes an engine may report."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sdserver.errors import JobErrorCode
from sdserver.jobs import Job, JobKind


class JobCancelled(Exception):
    """Raised from `StepContext.step` when the job must stop: cancel requested, lease lost, or worker stopping."""


class DeviceOutOfMemory(Exception):
    """The device ran out of memory on this job. Engines raise it after freeing what they can; the worker lives on."""


class DeviceFailure(Exception):
    """The device is in a state the process cannot recover from: the job fails and the worker exits."""


class JobFailed(Exception):
    """An engine's explained refusal of a job (missing weights, unusable input): fails the job with this code
    and message, which the client sees; the worker goes on."""

    def __init__(self, code: JobErrorCode, message: str):
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
