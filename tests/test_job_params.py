"""Typed job params: every kind's params and the reply echo survive the JSON row, defaults agree with the scheduler
table, and rows the build did not write are refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sdserver.catalog.schedulers import plan_scheduler
from sdserver.job_params import (
    DEFAULT_KARRAS_SIGMAS,
    DEFAULT_SCHEDULER,
    DEFAULT_SCHEDULER_NAME,
    PARAMS_VERSION,
    ControlNetMode,
    ControlNetParams,
    ControlNetUnit,
    FakeParams,
    GenerationParams,
    JobParams,
    JobReply,
    ModelLoadParams,
    SchedulerChoice,
    StoredParamsError,
    SuperResolutionParams,
    dump_job_params,
    generation_part,
    load_job_params,
    parse_params,
)
from sdserver.jobs import PARAMS_FOR_KIND, JobKind, JobSpec

GENERATION = GenerationParams(
    prompt="ünïcode ☃",
    negative_prompt="blurry",
    steps=30,
    guidance_scale=5.0,
    seed=2**32 - 1,
    samples=3,
    scheduler=SchedulerChoice("DPMSolverMultistepScheduler", True, "sde-dpmsolver++"),
    clip_skip=2,
    strength=0.25,
    loras=(("detail", 0.5), ("style.v2", -1.0)),
    vae="vae-a",
    embeddings=("emb-a", "emb-b"),
    tomesd=False,
    safety_checker=True,
    safety_checker_type="blur",
    init_image_key="temp/uploads/init.png",
    mask_image_key="temp/uploads/mask.png",
)
CONTROLNET = ControlNetParams(
    generation=GenerationParams(prompt="", init_image_key="temp/uploads/init.png"),
    units=(ControlNetUnit("canny", "canny", 0.5), ControlNetUnit("custom-cn")),
    control_image_key="temp/uploads/control.png",
    mode=ControlNetMode.IMG2IMG,
    guess_mode=True,
    auto_hint=True,
)
EVERY_KIND: list[JobParams] = [
    GENERATION,
    GenerationParams(prompt="defaults only"),
    CONTROLNET,
    SuperResolutionParams("temp/uploads/in.png", 2.5, face_enhance=True),
    ModelLoadParams("checkpoint", "hub", "owner/name", revision="main"),
    FakeParams(prompt="x", steps=7, seed=3, step_delay_s=0.05),
]


def _stored(params: JobParams, reply: JobReply) -> dict[str, Any]:
    """What the job store writes and reads back: JSON text."""
    loaded: dict[str, Any] = json.loads(json.dumps(dump_job_params(params, reply)))
    return loaded


@pytest.mark.parametrize("params", EVERY_KIND, ids=lambda params: type(params).__name__)
def test_every_kind_round_trips_through_json(params: JobParams) -> None:
    reply = JobReply(fetch_prefix="/api/v3", meta={"seed": 1, "nested": {"list": [1, 2.5, None]}}, base64=True)
    assert load_job_params(_stored(params, reply)) == (params, reply)


def test_stored_form_is_tagged_and_versioned() -> None:
    stored = _stored(CONTROLNET, JobReply())
    assert stored["version"] == PARAMS_VERSION
    assert stored["params"]["type"] == "controlnet"
    assert stored["params"]["units"][0] == {"model": "canny", "hint_type": "canny", "scale": 0.5}
    assert stored["reply"] == {"fetch_prefix": "", "meta": {}, "base64": False, "single_output": False}


def test_the_default_scheduler_is_what_the_table_plans_for_the_default_name() -> None:
    assert plan_scheduler(DEFAULT_SCHEDULER_NAME, DEFAULT_KARRAS_SIGMAS, None) == DEFAULT_SCHEDULER
    assert GenerationParams(prompt="x").scheduler == DEFAULT_SCHEDULER


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"version": 2, "params": {"type": "test"}}, "version 2"),
        ({"version": PARAMS_VERSION, "params": {"type": "painting"}}, "unknown params type"),
        ({"version": PARAMS_VERSION, "params": {"type": "super_resolution", "scale": 2}}, "input_key"),
        ({"version": PARAMS_VERSION, "params": {"type": "generation", "prompt": "x", "steps": "many"}}, "steps"),
        (
            {
                "version": PARAMS_VERSION,
                "params": {"type": "controlnet", "generation": {"prompt": ""}, "units": [], "control_image_key": "k"},
            },
            "at least one ControlNet",
        ),
    ],
    ids=["other-version", "unknown-type", "missing-field", "wrong-type", "no-controlnet"],
)
def test_rows_this_build_did_not_write_are_refused(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(StoredParamsError, match=problem):
        load_job_params(data)


def test_generation_part_of_generation_and_controlnet_jobs_only() -> None:
    assert generation_part(GENERATION) is GENERATION
    assert generation_part(CONTROLNET) is CONTROLNET.generation
    with pytest.raises(TypeError, match="SuperResolutionParams"):
        generation_part(SuperResolutionParams("k"))


def test_a_spec_takes_only_the_params_of_its_kind() -> None:
    assert set(PARAMS_FOR_KIND) == set(JobKind)
    spec = JobSpec(1, JobKind.SUPER_RESOLUTION, "x4", SuperResolutionParams("k"), output_keys=(), future_links=())
    assert spec.reply == JobReply()
    with pytest.raises(TypeError, match="model_load job cannot take FakeParams"):
        JobSpec(1, JobKind.MODEL_LOAD, "m", FakeParams(), output_keys=(), future_links=())
    with pytest.raises(TypeError, match="text2img job cannot take ControlNetParams"):
        JobSpec(1, JobKind.TEXT2IMG, "m", CONTROLNET, output_keys=(), future_links=())


def test_parse_params_reads_what_dump_wrote_with_lists_for_tuples() -> None:
    parsed = parse_params(_stored(GENERATION, JobReply())["params"])
    assert isinstance(parsed, GenerationParams)
    assert parsed.loras == (("detail", 0.5), ("style.v2", -1.0)) and parsed.embeddings == ("emb-a", "emb-b")
