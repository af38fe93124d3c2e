"""The per-family capability table: consistent with the scheduler table, defaults inside their own limits."""

from __future__ import annotations

import pytest

from sdserver.catalog.families import FamilyInfo, FewStep, ModelFamily, PredictionType
from sdserver.catalog.families.capabilities import (
    FAMILY_CAPABILITIES,
    FLOW_MATCH_SCHEDULER,
    GUIDANCE,
    family_capabilities,
    model_capabilities,
)
from sdserver.jobs import JobKind


@pytest.mark.parametrize("family", list(ModelFamily), ids=str)
def test_every_family_has_defaults_inside_its_limits(family: ModelFamily) -> None:
    for few_step in (None, FewStep.LCM, FewStep.SCHNELL):
        capabilities = family_capabilities(family, few_step)
        assert capabilities.family is family
        assert capabilities.default_scheduler in capabilities.schedulers
        assert capabilities.default_size <= capabilities.max_size
        assert capabilities.default_size % capabilities.size_multiple == 0
        assert 0 <= capabilities.default_guidance <= capabilities.max_guidance
        assert capabilities.kinds


def test_flow_families_refuse_noise_prediction_samplers_naming_the_valid_one() -> None:
    flux = FAMILY_CAPABILITIES[ModelFamily.FLUX]
    message = flux.scheduler_error("UniPCMultistepScheduler")
    assert message is not None and FLOW_MATCH_SCHEDULER in message and "flux" in message
    assert flux.scheduler_error(FLOW_MATCH_SCHEDULER) is None
    assert FAMILY_CAPABILITIES[ModelFamily.SD15].scheduler_error(FLOW_MATCH_SCHEDULER) is not None


def test_few_step_models_get_few_step_defaults() -> None:
    lcm = family_capabilities(ModelFamily.SD15, FewStep.LCM)
    assert (lcm.default_scheduler, lcm.default_steps, lcm.default_guidance) == ("LCMScheduler", 6, 1.0)
    schnell = family_capabilities(ModelFamily.FLUX, FewStep.SCHNELL)
    assert schnell.default_steps == 4 and not schnell.applies(GUIDANCE)
    assert FAMILY_CAPABILITIES[ModelFamily.FLUX].default_guidance == 3.5


def test_inpainting_models_serve_inpaint_and_the_refiner_no_text2img() -> None:
    info = FamilyInfo(ModelFamily.SDXL, PredictionType.EPSILON, inpainting=True)
    assert model_capabilities(info).kinds == {JobKind.INPAINT, JobKind.CONTROLNET}
    fill = FamilyInfo(ModelFamily.FLUX, PredictionType.FLOW_MATCH, inpainting=True)
    assert model_capabilities(fill).kinds == {JobKind.INPAINT}
    assert JobKind.TEXT2IMG not in FAMILY_CAPABILITIES[ModelFamily.SDXL_REFINER].kinds


def test_embeddings_are_refused_beyond_the_single_encoder_families() -> None:
    refusing = {
        family
        for family, capabilities in FAMILY_CAPABILITIES.items()
        if "embeddings_model" in capabilities.refused_fields
    }
    assert refusing == set(ModelFamily) - {ModelFamily.SD15, ModelFamily.SD2}
    assert not FAMILY_CAPABILITIES[ModelFamily.SDXL].applies("embeddings_model")
