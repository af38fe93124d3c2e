"""Scheduler names: the contract's 18 classes and the A1111 aliases either sample a tiny model or fail clearly when
planned (the API plans once; the engine builds what was planned)."""

from __future__ import annotations

import pytest
from PIL import Image

from sdserver.catalog.schedulers import (
    A1111_ALIASES,
    NOISE_ONLY_SCHEDULERS,
    SAMPLING_SCHEDULERS,
    SCHEDULER_NAMES,
    UNSUPPORTED_SCHEDULERS,
    SchedulerChoice,
    SchedulerError,
    plan_scheduler,
)
from sdserver.config import Settings
from sdserver.engines.diffusion.engine import DiffusionEngine
from sdserver.jobs import JobKind
from sdserver.objects.base import make_object_key
from sdserver.objects.local import LocalObjectStore
from tests.support.tiny_sd import RecordingContext, make_job, make_tiny_model, png_bytes

MODEL = "tiny-sched"
# diffusers' schedulers hand torch tensors to numpy 2 APIs in ways numpy deprecates; not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*"),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> LocalObjectStore:
    return LocalObjectStore(tmp_path_factory.mktemp("sched-objects"), "http://test", b"secret", 3600)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, objects: LocalObjectStore) -> DiffusionEngine:
    data_dir = tmp_path_factory.mktemp("sched-data")
    make_tiny_model(data_dir / "models", MODEL)
    return DiffusionEngine(Settings(data_dir=data_dir), objects)


def _run(engine: DiffusionEngine, scheduler: str, **params: object) -> tuple[bytes, dict[str, object]]:
    job = make_job(MODEL, scheduler=scheduler, steps=3, **params)
    [output] = engine.run([job], lambda _job: RecordingContext())
    return output.images[0], output.meta


def test_the_contract_lists_18_names() -> None:
    assert len(SCHEDULER_NAMES) == len(set(SCHEDULER_NAMES)) == 18
    assert {"KarrasVeScheduler", "ScoreSdeVeScheduler", "DDIMInverseScheduler"} == UNSUPPORTED_SCHEDULERS


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_every_contract_name_samples_or_fails_clearly(engine: DiffusionEngine, name: str) -> None:
    if name in UNSUPPORTED_SCHEDULERS:
        with pytest.raises(SchedulerError) as failure:
            plan_scheduler(name, True, None)
        assert failure.value.code == "unsupported_scheduler"
        assert failure.value.message == (
            f"{name} cannot sample a Stable Diffusion model; use e.g. DPMSolverMultistepScheduler"
        )
        return
    png, meta = _run(engine, name, use_karras_sigmas=True)
    assert png.startswith(b"\x89PNG")
    assert meta["scheduler"] == name
    assert meta["use_karras_sigmas"] == ("yes" if plan_scheduler(name, True, None).use_karras_sigmas else "no")


@pytest.mark.parametrize("alias", sorted(A1111_ALIASES))
def test_a1111_aliases_sample(engine: DiffusionEngine, alias: str) -> None:
    class_name, karras, algorithm = A1111_ALIASES[alias]
    _, meta = _run(engine, alias, use_karras_sigmas=not karras)
    assert meta["scheduler"] == class_name
    assert meta["use_karras_sigmas"] == ("yes" if karras else "no")
    if algorithm is not None:
        assert meta["algorithm_type"] == algorithm


@pytest.mark.parametrize(
    ("name", "karras", "algorithm", "expected"),
    [
        ("DPMSolverMultistepScheduler", True, "sde-dpmsolver++", ("yes", "sde-dpmsolver++")),
        ("DPMSolverMultistepScheduler", False, "dpmsolver+++", ("no", "dpmsolver++")),
        ("DPMSolverMultistepScheduler", True, "dpmsolver", ("yes", "dpmsolver")),
        ("DPMSolverMultistepScheduler", True, "sde-dpmsolver", ("yes", "sde-dpmsolver")),
        ("DPMSolverMultistepScheduler", True, None, ("yes", "dpmsolver++")),
        ("DPMSolverSinglestepScheduler", True, "sde-dpmsolver++", ("yes", "sde-dpmsolver++")),
        ("DPMSolverSinglestepScheduler", True, "sde-dpmsolver", ("yes", "dpmsolver++")),
        ("DEISMultistepScheduler", True, "dpmsolver++", ("yes", "deis")),
        ("EulerAncestralDiscreteScheduler", True, "dpmsolver++", ("no", None)),
        ("DDIMScheduler", True, None, ("no", None)),
    ],
    ids=lambda value: str(value),
)
def test_flags_apply_only_where_the_class_supports_them(
    engine: DiffusionEngine, name: str, karras: bool, algorithm: str | None, expected: tuple[str, str | None]
) -> None:
    _, meta = _run(engine, name, use_karras_sigmas=karras, algorithm_type=algorithm)
    assert (meta["use_karras_sigmas"], meta["algorithm_type"]) == expected


def test_karras_sigmas_change_the_image(engine: DiffusionEngine) -> None:
    plain, _ = _run(engine, "EulerDiscreteScheduler", use_karras_sigmas=False)
    karras, _ = _run(engine, "EulerDiscreteScheduler", use_karras_sigmas=True)
    assert plain != karras


def test_algorithm_type_changes_the_image(engine: DiffusionEngine) -> None:
    first, _ = _run(engine, "DPMSolverMultistepScheduler", algorithm_type="dpmsolver++")
    second, _ = _run(engine, "DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++")
    assert first != second


@pytest.mark.parametrize("name", ["DPM++ SDE Karras", "DPM++ 2M SDE", "EulerAncestralDiscreteScheduler"])
def test_stochastic_samplers_reproduce_with_the_seed(engine: DiffusionEngine, name: str) -> None:
    first, _ = _run(engine, name, seed=7)
    again, _ = _run(engine, name, seed=7)
    other, _ = _run(engine, name, seed=8)
    assert first == again
    assert first != other


def test_unknown_name_fails_with_its_own_code() -> None:
    with pytest.raises(SchedulerError) as failure:
        plan_scheduler("MagicScheduler", True, None)
    assert failure.value.code == "unknown_scheduler"
    assert "MagicScheduler" in failure.value.message


def test_plan_resolves_aliases_case_insensitively() -> None:
    assert plan_scheduler("dpm++ 2m karras", False, None) == SchedulerChoice(
        "DPMSolverMultistepScheduler", True, "dpmsolver++"
    )
    assert plan_scheduler("eulerdiscretescheduler", True, None).class_name == "EulerDiscreteScheduler"


def test_plan_refuses_unsupported_names_before_any_torch() -> None:
    with pytest.raises(SchedulerError) as failure:
        plan_scheduler("ScoreSdeVeScheduler", True, None)
    assert failure.value.code == "unsupported_scheduler"


@pytest.mark.parametrize("name", sorted(SAMPLING_SCHEDULERS))
def test_every_sampler_starts_from_an_image_or_fails_clearly(
    engine: DiffusionEngine, objects: LocalObjectStore, name: str
) -> None:
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    if name in NOISE_ONLY_SCHEDULERS:
        with pytest.raises(SchedulerError) as failure:
            plan_scheduler(name, True, None, from_image=True)
        assert failure.value.code == "unsupported_scheduler"
        assert "init image" in failure.value.message
        return
    key = objects.put(make_object_key("uploads", "png", temp=False), png_bytes(init), "image/png").key
    job = make_job(MODEL, JobKind.IMG2IMG, scheduler=name, steps=3, init_image_key=key, strength=0.7)
    [output] = engine.run([job], lambda _job: RecordingContext())
    assert output.meta["scheduler"] == name
