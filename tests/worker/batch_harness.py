"""What the worker batching tests of every engine share: a real worker thread over a test harness, an engine
wrapper whose user cancels one job of a batch once its first step is done, and a step context that hears nothing."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sdserver.engines.base import EngineOutput, StepContext
from sdserver.jobs import Job
from sdserver.worker.loop import Worker
from tests.worker.test_loop import Harness


class CancelAfterFirstStep:
    """The real engine, with a user who cancels one job (through the store) once it has done its first step."""

    def __init__(self, inner: Any, harness: Harness, victim: int) -> None:
        self.inner, self.harness, self.victim = inner, harness, victim
        self.name = inner.name
        self.batchable = inner.batchable

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def run(self, jobs: Sequence[Job], ctx: Callable[[Job], StepContext]) -> list[EngineOutput]:
        harness, victim = self.harness, self.victim

        class Hook:
            def __init__(self, job: Job) -> None:
                self.job, self.inner = job, ctx(job)

            @property
            def stopped(self) -> bool:
                return bool(getattr(self.inner, "stopped", False))

            def step(self, done: int, total: int) -> None:
                if self.job.id == victim and done == 1:
                    harness.store.cancel(victim, owner_key_id=None)
                    time.sleep(0.3)  # past the progress interval: the worker hears of it at this very step
                self.inner.step(done, total)

        result: list[EngineOutput] = self.inner.run(jobs, Hook)
        return result


class RunningWorker:
    """A real worker over `harness` running `engine` in a thread while the `with` block lasts."""

    def __init__(self, harness: Harness, engine: Any, *, max_batch: int, window_s: float = 0.0) -> None:
        self.stop = threading.Event()
        self.worker = Worker(
            harness.settings, harness.store, harness.objects, [engine], f"w-{uuid.uuid4().hex[:6]}",
            max_batch=max_batch, batch_window_s=window_s, idle_wait_s=0.05,
        )  # fmt: skip
        self.thread = threading.Thread(target=self.worker.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> RunningWorker:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


class QuietSteps:
    """A step context for running a job alone, outside any worker."""

    def step(self, done: int, total: int) -> None:
        pass
