"""Tiny models of every family on CUDA in fp16: each kind repeats exactly and makes finite images, and the SDXL
refiner pass runs. Skipped without a CUDA device; scripts/device-check.sh runs them on a lent GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sdserver.config import Settings
from sdserver.engines.diffusion.engine import DiffusionEngine
from sdserver.engines.diffusion.tiny_families.names import TinyFamily
from sdserver.engines.diffusion.tiny_families.writer import make_tiny_family_model
from sdserver.job_params import GenerationParams, SchedulerChoice
from sdserver.jobs import JobKind
from sdserver.objects.base import make_object_key
from sdserver.objects.local import LocalObjectStore
from tests.support.tiny_sd import RecordingContext, make_job, pixels, png_bytes

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
]

FLOW = SchedulerChoice("FlowMatchEulerDiscreteScheduler", False, None)
SCHEDULERS = {
    TinyFamily.SD3: FLOW,
    TinyFamily.FLUX: FLOW,
    TinyFamily.LCM: SchedulerChoice("LCMScheduler", False, None),
}
FAMILIES = [TinyFamily.SD2V, TinyFamily.SDXL, TinyFamily.SD3, TinyFamily.FLUX, TinyFamily.LCM]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[DiffusionEngine, str, str]:
    data_dir: Path = tmp_path_factory.mktemp("gpu-families")
    for family in [*FAMILIES, TinyFamily.SDXL_REFINER]:
        make_tiny_family_model(data_dir / "models", family.value, family, seed=3)
    objects = LocalObjectStore(data_dir / "objects", "http://test", b"secret", 3600)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))
    keys = [
        objects.put(make_object_key("uploads", "png", temp=False), png_bytes(image), "image/png").key
        for image in (Image.linear_gradient("L").resize((64, 64)).convert("RGB"), mask)
    ]
    engine = DiffusionEngine(Settings(data_dir=data_dir), objects, max_loaded=8, device="cuda")
    return engine, keys[0], keys[1]


def _run(setup: tuple[DiffusionEngine, str, str], model: str, kind: JobKind, **fields: Any) -> Any:
    engine, init_key, mask_key = setup
    family = TinyFamily(model)
    values: dict[str, Any] = {"prompt": "a cat", "steps": 4, "seed": 7, "tomesd": False, "safety_checker": False}
    values["scheduler"] = SCHEDULERS.get(family, SchedulerChoice("EulerDiscreteScheduler", False, None))
    if kind is not JobKind.TEXT2IMG:
        values |= {"init_image_key": init_key, "strength": 1.0}
    if kind is JobKind.INPAINT:
        values["mask_image_key"] = mask_key
    job = make_job(model, kind, GenerationParams(**(values | fields)), width=64, height=64)
    [output] = engine.run([job], lambda _job: RecordingContext())
    return output


@pytest.mark.parametrize("family", FAMILIES, ids=str)
@pytest.mark.parametrize("kind", [JobKind.TEXT2IMG, JobKind.IMG2IMG, JobKind.INPAINT], ids=str)
def test_each_family_runs_in_half_precision_and_repeats(setup: Any, family: TinyFamily, kind: JobKind) -> None:
    first, again = _run(setup, family.value, kind), _run(setup, family.value, kind)
    # FLUX.1 overflows fp16, so under `auto` it runs in bf16 on CUDA.
    expected = "bf16" if family is TinyFamily.FLUX else "fp16"
    assert first.meta["precision"] == expected and first.images == again.images
    image = pixels(first.images[0])
    # fp16 overflow shows as NaN, which decodes to a flat black image.
    assert image.shape == (64, 64, 3) and np.ptp(image) > 0


def test_the_refiner_pass_runs_on_cuda(setup: Any) -> None:
    base = _run(setup, "sdxl", JobKind.TEXT2IMG)
    refined = _run(setup, "sdxl", JobKind.TEXT2IMG, refiner=True)
    assert refined.meta["refiner"] == "sdxl_refiner" and refined.images != base.images
