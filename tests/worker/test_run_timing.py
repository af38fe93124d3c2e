"""Splitting a run's wall time into model load and work from its step reports."""

from __future__ import annotations

import pytest

from sdserver.worker.run_timing import RunCost, RunTiming


def test_a_run_that_loaded_splits_load_from_work() -> None:
    timing = RunTiming(loaded_model=True, started=100.0)
    timing.on_step(0, 100.0)  # "about to start": engines report it before loading
    # Load 7 s, then 10 steps of 0.5 s each, then 1 s of decoding and encoding.
    for step in range(1, 11):
        timing.on_step(step, 107.0 + 0.5 * step)
    assert timing.step_seconds() == pytest.approx(0.5)
    cost = timing.cost(elapsed_s=13.0)
    assert cost.load_seconds == pytest.approx(7.0)
    assert cost.run_seconds == pytest.approx(6.0)


def test_a_run_with_the_model_held_is_all_work() -> None:
    timing = RunTiming(loaded_model=False, started=0.0)
    for step in range(1, 5):
        timing.on_step(step, float(step))
    assert timing.cost(elapsed_s=5.0) == RunCost(5.0, None)


def test_too_few_steps_to_split_teaches_nothing() -> None:
    timing = RunTiming(loaded_model=True, started=0.0)
    timing.on_step(1, 3.0)  # a one-tile upscale: one report
    assert timing.step_seconds() is None
    assert timing.cost(elapsed_s=4.0) == RunCost(None, None)
