"""Splits one engine run's wall time into model load and work, from the times its steps were reported."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RunCost:
    """What the ETA model learns from one finished run: seconds of work (load excluded) and of loading."""

    # None when the run loaded its model and reported too few steps to tell the load from the work.
    run_seconds: float | None
    # Only set when the run had to load its model first (the worker did not hold it when the run began).
    load_seconds: float | None


@dataclass
class RunTiming:
    """Step reports of one run. The first report comes after load + prompt encoding + the first steps; later
    reports come one step apart, so (last − first) / (steps between them) is the pure per-step time."""

    loaded_model: bool
    started: float = field(default_factory=time.monotonic)
    _first: tuple[int, float] | None = None
    _last: tuple[int, float] | None = None

    def on_step(self, done: int, now: float | None = None) -> None:
        if done <= 0:  # "about to start" (engines report step 0 before loading): no work measured yet
            return
        at = time.monotonic() if now is None else now
        if self._first is None:
            self._first = (done, at)
        elif done > self._first[0]:
            self._last = (done, at)

    def step_seconds(self) -> float | None:
        """Seconds per step measured between the first and the last report, or None with fewer than two."""
        if self._first is None or self._last is None:
            return None
        return (self._last[1] - self._first[1]) / (self._last[0] - self._first[0])

    def cost(self, elapsed_s: float) -> RunCost:
        """The run's work and load seconds, given its whole wall time (run start to outputs ready)."""
        if not self.loaded_model:
            return RunCost(elapsed_s, None)
        per_step = self.step_seconds()
        if self._first is None or per_step is None:
            # Too few steps to tell the load from the work (one-tile upscales, one-step jobs): nothing learnt.
            return RunCost(None, None)
        done, at = self._first
        load = max(0.0, at - self.started - done * per_step)
        return RunCost(max(0.0, elapsed_s - load), load)
