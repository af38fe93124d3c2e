"""Torch-free family helpers: LoRA families from keys, the detection cache, staged detection and schedulers per
family."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sdserver.catalog.families import FamilyInfo, FewStep, ModelFamily, PredictionType
from sdserver.catalog.families.cache import DetectionCache
from sdserver.catalog.families.loras import detect_lora
from sdserver.catalog.families.staged import detect_staged
from sdserver.catalog.schedulers import SchedulerError, plan_scheduler
from sdserver.errors import JobErrorCode, UnsupportedModelError
from tests.support.family_layouts import checkpoint_bytes, lora_bytes

FLUX = FamilyInfo(ModelFamily.FLUX, PredictionType.FLOW_MATCH)
SDXL = FamilyInfo(ModelFamily.SDXL, PredictionType.EPSILON)


@pytest.mark.parametrize(
    ("width", "family"), [(768, ModelFamily.SD15), (1024, ModelFamily.SD2), (2048, ModelFamily.SDXL)], ids=str
)
def test_a_loras_family_is_told_by_its_cross_attention_width(tmp_path: Path, width: int, family: ModelFamily) -> None:
    path = tmp_path / "lora.safetensors"
    path.write_bytes(lora_bytes(width))
    info = detect_lora(path)
    assert info is not None and info.family is family


def test_a_lora_whose_keys_do_not_tell_has_no_family(tmp_path: Path) -> None:
    path = tmp_path / "odd.safetensors"
    path.write_bytes(checkpoint_bytes("flux").replace(b"double_blocks", b"other_blocks_"))
    assert detect_lora(path) is None
    (tmp_path / "pickle.safetensors").write_bytes(b"\x80\x02}q\x00.")
    assert detect_lora(tmp_path / "pickle.safetensors") is None


def test_the_cache_detects_once_until_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"one")
    calls: list[int] = []

    def detect() -> FamilyInfo | None:
        calls.append(1)
        if len(calls) > 1:
            raise UnsupportedModelError("m.safetensors: changed")
        return SDXL

    cache = DetectionCache()
    assert cache.get("checkpoint", path, detect).info == SDXL
    assert cache.get("checkpoint", path, detect).info == SDXL and len(calls) == 1
    path.write_bytes(b"two, longer")
    os.utime(path, ns=(1, 1))
    changed = cache.get("checkpoint", path, detect)
    assert (changed.info, changed.unsupported, len(calls)) == (None, "m.safetensors: changed", 2)
    with pytest.raises(UnsupportedModelError):
        changed.require()


def test_staged_detection_names_the_model_id_not_the_staging_file(tmp_path: Path) -> None:
    staged = tmp_path / "checkpoint--mine--0123.part"
    staged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json here...")
    with pytest.raises(UnsupportedModelError) as caught:
        detect_staged(staged, "mine")
    assert caught.value.message.startswith("mine: not a safetensors file")
    staged.write_bytes(b"PK\x03\x04zip")
    assert detect_staged(staged, "mine") is None


def test_schedulers_are_planned_per_family() -> None:
    assert plan_scheduler("FlowMatchEulerDiscreteScheduler", True, None, family=FLUX).use_karras_sigmas is False
    with pytest.raises(SchedulerError) as caught:
        plan_scheduler("DDIM", False, None, family=FLUX)
    assert caught.value.code is JobErrorCode.UNSUPPORTED_SCHEDULER
    assert caught.value.message == (
        "DDIMScheduler cannot sample flux models; valid for this family: FlowMatchEulerDiscreteScheduler"
    )
    with pytest.raises(SchedulerError, match="samples SD3 and Flux models only"):
        plan_scheduler("FlowMatchEulerDiscreteScheduler", False, None)
    lcm = FamilyInfo(ModelFamily.SD15, PredictionType.EPSILON, few_step=FewStep.LCM)
    assert plan_scheduler("LCMScheduler", True, None, family=lcm).class_name == "LCMScheduler"
    assert plan_scheduler("DPM++ 2M Karras", False, None, family=SDXL).use_karras_sigmas
