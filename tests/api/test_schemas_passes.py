"""The generation-pass fields as the API reads them: vendor spellings, and a field error naming field, rule and value
for every combination that cannot run."""

from __future__ import annotations

from typing import Any

import pytest

from sdserver.api.fields import validate_request
from sdserver.api.schemas_generation import Img2ImgRequest, Text2ImgRequest, resolve_generation
from sdserver.api.schemas_passes import with_passes
from sdserver.catalog.families import FamilyInfo, ModelFamily
from sdserver.errors import ValidationError
from sdserver.job_params import GenerationPasses
from sdserver.jobs import JobKind

SD15 = FamilyInfo(ModelFamily.SD15, None)
BASE: dict[str, Any] = {"prompt": "a cat", "width": 512, "height": 512}


def passes_for(fields: dict[str, Any], kind: JobKind = JobKind.TEXT2IMG, family: FamilyInfo | None = SD15) -> Any:
    schema = Img2ImgRequest if kind is not JobKind.TEXT2IMG else Text2ImgRequest
    request = validate_request(schema, BASE | fields)
    resolved = with_passes(resolve_generation(request, model_id="m", family=family), request, kind, family)
    return resolved


@pytest.mark.parametrize(
    ("value", "scale"), [("yes", 2.0), (True, 2.0), ("no", 1.0), (False, 1.0), (0, 1.0), ("3", 3.0), (1.5, 1.5)]
)
def test_upscale_takes_flags_and_factors(value: object, scale: float) -> None:
    resolved = passes_for({"upscale": value})
    assert resolved.params.passes.upscale_scale == scale
    assert "unsupported" not in resolved.meta()
    assert resolved.meta()["upscale"] == ("no" if scale == 1 else f"{scale:g}")


def test_no_pass_asked_keeps_the_defaults() -> None:
    assert passes_for({}).params.passes == GenerationPasses()


@pytest.mark.parametrize(
    ("fields", "kind", "family", "message"),
    [
        ({"upscale": "9"}, JobKind.TEXT2IMG, SD15, "upscale: must be yes/no or a factor from 1 to 4, got '9'"),
        ({"upscale": "huge"}, JobKind.TEXT2IMG, SD15, "upscale: must be yes/no or a factor from 1 to 4, got 'huge'"),
        (
            {"upscale": 4, "width": 2048},
            JobKind.TEXT2IMG,
            FamilyInfo(ModelFamily.SDXL, None),
            "upscale: would make a 8192x2048 image",
        ),
        ({"panorama": "yes"}, JobKind.TEXT2IMG, SD15, "panorama: needs a width greater than the height, got '512x512'"),
        (
            {"panorama": "yes", "width": 1024, "init_image": "https://example.com/a.png"},
            JobKind.IMG2IMG,
            SD15,
            "panorama: applies to text2img only, got 'yes on img2img'",
        ),
        (
            {"self_attention": "yes"},
            JobKind.TEXT2IMG,
            FamilyInfo(ModelFamily.FLUX, None),
            "self_attention: runs with sd15, sd2 models (not inpainting ones), got 'yes on flux'",
        ),
        (
            {"self_attention": "yes", "scheduler": "EulerDiscreteScheduler"},
            JobKind.TEXT2IMG,
            SD15,
            "self_attention: runs with the schedulers DDIMScheduler",
        ),
        (
            {"highres_fix": "yes", "width": 64},
            JobKind.TEXT2IMG,
            SD15,
            "highres_fix: needs width and height of at least",
        ),
        (
            {"highres_fix": "yes", "panorama": "yes"},
            JobKind.TEXT2IMG,
            SD15,
            "panorama: cannot be combined with highres_fix",
        ),
    ],
)
def test_combinations_that_cannot_run_are_field_errors(
    fields: dict[str, Any], kind: JobKind, family: FamilyInfo, message: str
) -> None:
    with pytest.raises(ValidationError) as error:
        passes_for(fields, kind, family)
    assert error.value.message.startswith(message), error.value.message
    assert message.split(":")[0] in error.value.field_errors


def test_each_pass_that_runs_is_set_and_echoed() -> None:
    resolved = passes_for({"highres_fix": "yes", "upscale": "yes"}, family=FamilyInfo(ModelFamily.SDXL, None))
    assert resolved.params.passes == GenerationPasses(upscale_scale=2.0, highres_fix=True)
    assert resolved.meta()["highres_fix"] == "yes" and "unsupported" not in resolved.meta()
    wide = passes_for({"panorama": True, "width": 1024}, family=None)
    assert wide.params.passes.panorama and wide.meta()["panorama"] == "yes"
    assert passes_for({"self_attention": 1}).params.passes.self_attention
