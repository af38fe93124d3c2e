"""Rows written before typed params (flat, unversioned dicts, as the API of that time wrote them) still read: queued
jobs run with what was asked, finished ones keep their reply echo."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sdserver.database import create_db_engine
from sdserver.job_params import (
    ControlNetMode,
    ControlNetParams,
    ControlNetUnit,
    FakeParams,
    GenerationParams,
    JobReply,
    ModelLoadParams,
    SchedulerChoice,
    StoredParamsError,
    SuperResolutionParams,
)
from sdserver.jobs import JobKind, JobSpec
from sdserver.jobstore.legacy_params import load_legacy_params
from sdserver.jobstore.store import JobStore
from sdserver.jobstore.tables import jobs

META = {"prompt": "a fox", "scheduler": "DPMSolverMultistepScheduler", "file_prefix": "abc"}
# A text2img row of the old API, verbatim but for the shortened meta.
TEXT2IMG_ROW: dict[str, Any] = {
    "prompt": "a fox",
    "negative_prompt": "ugly",
    "num_inference_steps": 50,
    "guidance_scale": 3.0,
    "seed": 5,
    "samples": 2,
    "use_karras_sigmas": True,
    "algorithm_type": "dpmsolver++",
    "clip_skip": 2,
    "lora_models": ["lora-a"],
    "lora_strengths": [0.5],
    "vae": "vae-a",
    "embeddings": ["emb-a"],
    "tomesd": False,
    "safety_checker": True,
    "safety_checker_type": "blur",
    "base64": True,
    "fetch_prefix": "/api/v6/realtime",
    "meta": META,
}
GENERATION = GenerationParams(
    prompt="a fox",
    negative_prompt="ugly",
    steps=50,
    guidance_scale=3.0,
    seed=5,
    samples=2,
    scheduler=SchedulerChoice("DPMSolverMultistepScheduler", True, "dpmsolver++"),
    clip_skip=2,
    loras=(("lora-a", 0.5),),
    vae="vae-a",
    embeddings=("emb-a",),
    tomesd=False,
    safety_checker=True,
    safety_checker_type="blur",
)


def test_a_generation_row_keeps_its_settings_and_reply_echo() -> None:
    params, reply = load_legacy_params(JobKind.TEXT2IMG, "DPMSolverMultistepScheduler", TEXT2IMG_ROW)
    assert params == GENERATION
    assert reply == JobReply(fetch_prefix="/api/v6/realtime", meta=META, base64=True)


def test_an_img2img_row_keeps_its_image_and_strength() -> None:
    row = TEXT2IMG_ROW | {"strength": 0.4, "init_image_key": "temp/uploads/i.png"}
    params, _ = load_legacy_params(JobKind.IMG2IMG, "DPMSolverMultistepScheduler", row)
    assert isinstance(params, GenerationParams)
    assert (params.strength, params.init_image_key) == (0.4, "temp/uploads/i.png")


@pytest.mark.parametrize(
    ("images", "mode", "init", "control"),
    [
        ({"init_image_key": "i"}, ControlNetMode.TEXT2IMG, None, "i"),
        ({"control_image_key": "c"}, ControlNetMode.TEXT2IMG, None, "c"),
        ({"init_image_key": "i", "control_image_key": "c"}, ControlNetMode.IMG2IMG, "i", "c"),
        ({"init_image_key": "i", "mask_image_key": "m"}, ControlNetMode.INPAINT, "i", "i"),
    ],
    ids=["init-as-control", "control-only", "img2img", "inpaint"],
)
def test_a_controlnet_row_gets_the_mode_the_engine_read_from_its_images(
    images: dict[str, str], mode: ControlNetMode, init: str | None, control: str
) -> None:
    row = (
        TEXT2IMG_ROW
        | images
        | {
            "controlnet_model": ["cn-a", "canny"],
            "controlnet_type": [None, "canny"],
            "controlnet_conditioning_scale": [1.0, 0.5],
            "auto_hint": False,
            "guess_mode": True,
        }
    )
    params, _ = load_legacy_params(JobKind.CONTROLNET, "DPMSolverMultistepScheduler", row)
    assert isinstance(params, ControlNetParams)
    assert params.units == (ControlNetUnit("cn-a", None, 1.0), ControlNetUnit("canny", "canny", 0.5))
    assert (params.mode, params.generation.init_image_key, params.control_image_key) == (mode, init, control)
    assert params.guess_mode and not params.auto_hint


def test_super_resolution_and_model_load_rows() -> None:
    upscale = {"input_key": "k", "scale": 2.0, "face_enhance": False, "base64": False, "single_output": True}
    params, reply = load_legacy_params(JobKind.SUPER_RESOLUTION, "", upscale | {"fetch_prefix": "/api/v3"})
    assert params == SuperResolutionParams("k", 2.0) and reply == JobReply(fetch_prefix="/api/v3", single_output=True)
    load = {"model_kind": "lora", "source_type": "url", "source": "https://x/l.safetensors", "revision": None}
    params, _ = load_legacy_params(JobKind.MODEL_LOAD, "", load | {"format": "", "meta": {}})
    assert params == ModelLoadParams("lora", "url", "https://x/l.safetensors")


def test_a_row_that_does_not_fit_is_refused() -> None:
    with pytest.raises(StoredParamsError, match="input_key"):
        load_legacy_params(JobKind.SUPER_RESOLUTION, "", {"scale": 2.0})


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'legacy.db'}")
    yield engine
    engine.dispose()


def test_the_store_reads_an_old_row_and_a_worker_claims_it(engine: sa.Engine) -> None:
    store = JobStore(engine)
    spec = JobSpec(1, JobKind.TEXT2IMG, "sd", FakeParams(), output_keys=("o.png",), future_links=("http://x/o.png",))
    job = store.submit(spec)
    with engine.begin() as conn:
        conn.execute(sa.update(jobs).where(jobs.c.id == job.id).values(params=json.dumps(TEXT2IMG_ROW)))
        conn.execute(sa.update(jobs).where(jobs.c.id == job.id).values(scheduler="DPMSolverMultistepScheduler"))
    [claimed] = store.claim("w1", lease_s=30)
    assert (claimed.params, claimed.reply.meta) == (GENERATION, META)
