"""Batch keys: which jobs may share one pipeline call or forward pass, decided from their typed params alone."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import pytest

from sdserver.batch_keys import PER_JOB_FIELDS, SHARED_FIELDS, UPSCALE_PER_JOB_FIELDS, batch_key, is_solo
from sdserver.job_params import (
    ControlNetParams,
    ControlNetUnit,
    FakeParams,
    GenerationParams,
    GenerationPasses,
    SchedulerChoice,
    SuperResolutionParams,
)
from sdserver.jobs import JobKind, JobSpec

BASE = GenerationParams(prompt="a cat", negative_prompt="blurry", seed=1)


def key(params: GenerationParams = BASE, kind: str = "text2img", unique: str = "a") -> str:
    return batch_key(kind, params, unique=unique)


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": "a dog"},
        {"negative_prompt": "ugly"},
        {"seed": 99},
        {"samples": 3},
        {"safety_checker": False},
        {"safety_checker_type": "blur"},
        {"init_image_key": "uploads/other.png"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_per_job_settings_keep_the_key(change: dict[str, Any]) -> None:
    kind = "img2img" if "init_image_key" in change else "text2img"
    base = replace(BASE, init_image_key="uploads/one.png") if kind == "img2img" else BASE
    assert key(replace(base, **change), kind, unique="b") == key(base, kind, unique="a")
    assert not is_solo(key(base, kind))


@pytest.mark.parametrize(
    "change",
    [
        {"steps": 30},
        {"guidance_scale": 3.0},
        {"scheduler": SchedulerChoice("EulerDiscreteScheduler", False, None)},
        {"scheduler": replace(BASE.scheduler, use_karras_sigmas=not BASE.scheduler.use_karras_sigmas)},
        {"clip_skip": 2},
        {"loras": (("ink", 0.5),)},
        {"vae": "sharp-vae"},
        {"embeddings": ("style",)},
        {"tomesd": not BASE.tomesd},
        {"negative_prompt": ""},
    ],
    ids=lambda change: f"{next(iter(change))}={next(iter(change.values()))}",
)
def test_shared_settings_change_the_key(change: dict[str, Any]) -> None:
    assert key(replace(BASE, **change)) != key()
    assert not is_solo(key(replace(BASE, **change)))


def test_lora_strength_and_img2img_strength_are_shared_settings() -> None:
    with_lora = replace(BASE, loras=(("ink", 0.5),))
    assert key(replace(with_lora, loras=(("ink", 0.8),))) != key(with_lora)
    image = replace(BASE, init_image_key="uploads/one.png")
    assert key(replace(image, strength=0.3), "img2img") != key(image, "img2img")
    # text2img never reads the strength.
    assert key(replace(BASE, strength=0.3)) == key()


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("inpaint", replace(BASE, init_image_key="uploads/i.png", mask_image_key="uploads/m.png")),
        ("text2img", replace(BASE, refiner=True)),
        ("text2img", replace(BASE, scheduler=SchedulerChoice("DPMSolverSDEScheduler", True, None))),
        ("controlnet", ControlNetParams(BASE, (ControlNetUnit("canny"),), "uploads/c.png")),
    ],
    ids=["inpaint", "refiner", "sde", "controlnet"],
)
def test_jobs_that_must_run_alone_get_a_key_of_their_own(kind: str, params: Any) -> None:
    first, second = batch_key(kind, params, unique="job-1"), batch_key(kind, params, unique="job-2")
    assert is_solo(first) and is_solo(second) and first != second


def test_a_setting_outside_both_lists_batches_only_at_its_default() -> None:
    # Every field is either per job, shared, or (like a field added later) must be at its default to batch.
    known = PER_JOB_FIELDS | set(SHARED_FIELDS) | {"strength"}
    others = [spec.name for spec in fields(GenerationParams) if spec.name not in known]
    assert set(others) == {"mask_image_key", "refiner", "passes"}
    assert is_solo(key(replace(BASE, mask_image_key="uploads/m.png")))
    # Generation passes (upscale, highres fix, face_enhance, ...) run per job: a job asking for one runs alone.
    assert is_solo(key(replace(BASE, passes=GenerationPasses(face_enhance=True))))


def test_params_no_engine_batches_keep_the_plain_signature() -> None:
    assert batch_key("super_resolution", SuperResolutionParams("uploads/x.png"), unique="a") == ""
    assert batch_key("text2img", FakeParams(), unique="a") == ""


def test_upscales_share_a_key_whatever_their_per_job_settings() -> None:
    # Scale (a resize after the network) and face_enhance (a pass on each output) leave the forward pass alone.
    base = SuperResolutionParams("uploads/x.png")
    for params in (
        replace(base, input_key="uploads/y.png"),
        replace(base, scale=2.0),
        replace(base, face_enhance=True),
    ):
        assert batch_key("super_resolution", params, unique="b") == batch_key("super_resolution", base, unique="a")
    # A field added later must be classified here before its jobs batch.
    assert {spec.name for spec in fields(SuperResolutionParams)} == UPSCALE_PER_JOB_FIELDS


def test_upscale_signatures_group_by_model_and_input_size_only() -> None:
    def signature(model_id: str = "realesr-general-x4v3", size: int = 64, **params: Any) -> str:
        return JobSpec(
            owner_key_id=1, kind=JobKind.SUPER_RESOLUTION, model_id=model_id,
            params=SuperResolutionParams("uploads/x.png", **params), output_keys=("outputs/a.png",),
            future_links=("http://x/a.png",), width=size, height=size,
        ).batch_signature  # fmt: skip

    assert signature(scale=2.0) == signature(scale=4.0, face_enhance=True)
    assert signature() != signature(size=65)
    assert signature() != signature(model_id="RealESRGAN_x4plus")
