"""The ETA's cost model: the line fitted through measured runs, and the work unit."""

from __future__ import annotations

import pytest

from sdserver.jobstore.eta import Cost, fit_cost, work_units


def test_work_units_are_512_squared_steps() -> None:
    assert work_units(512, 512, 30) == 30
    assert work_units(1024, 1024, 1) == 4
    # Step-less jobs (upscales) are one pass over their pixels; unknown sizes count as one 512×512 image.
    assert work_units(256, 256, 0) == 0.25
    assert work_units(0, 0, 0) == 1


def test_fit_finds_the_fixed_part_and_the_rate() -> None:
    # 2 s per job (encoding, decoding) + 0.5 s per unit, measured at three sizes.
    samples = [(units, 2.0 + 0.5 * units) for units in (1.0, 4.0, 16.0, 4.0)]
    cost = fit_cost(samples)
    assert cost is not None
    assert cost.fixed == pytest.approx(2.0)
    assert cost.per_unit == pytest.approx(0.5)
    assert cost.seconds(8.0, jobs=2) == pytest.approx(2 * 2.0 + 0.5 * 8.0)


def test_one_size_fits_through_the_origin_with_the_median() -> None:
    assert fit_cost([(10.0, 20.0), (10.0, 20.0), (10.0, 500.0)]) == Cost(0.0, 2.0)


def test_fit_never_goes_negative() -> None:
    # Noise that would give a negative fixed part: the slope alone.
    steep = fit_cost([(1.0, 0.1), (2.0, 5.0), (3.0, 9.0)])
    assert steep is not None and steep.fixed == 0.0 and steep.per_unit > 0
    # Bigger jobs measured faster than small ones: a flat cost at the mean.
    flat = fit_cost([(1.0, 6.0), (4.0, 2.0)])
    assert flat == Cost(4.0, 0.0)
    assert fit_cost([]) is None
