"""Cross-request batching on CUDA: a batch of tiny SD 1.5 and SDXL jobs in fp16, and a batch of upscales, gives
each job the image it makes alone, and the automatic batch size comes from the device's free memory. Skipped
without a CUDA device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sdserver.config import Settings
from sdserver.engines.diffusion.engine import DiffusionEngine
from sdserver.engines.diffusion.tiny_families.names import TinyFamily
from sdserver.engines.diffusion.tiny_families.writer import make_tiny_family_model
from sdserver.job_params import GenerationParams, SchedulerChoice
from sdserver.jobs import JobKind
from sdserver.objects.local import LocalObjectStore
from sdserver.worker.batching import worker_max_batch
from tests.support.tiny_sd import RecordingContext, make_job, pixels

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
]

EULER = SchedulerChoice("EulerDiscreteScheduler", False, None)
# fp16 rounds batched and single maths further apart than fp32 does.
MAX_GREY_LEVELS = 2.0


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> DiffusionEngine:
    data_dir: Path = tmp_path_factory.mktemp("gpu-batching")
    for family in (TinyFamily.SD15, TinyFamily.SDXL):
        make_tiny_family_model(data_dir / "models", family.value, family, seed=5)
    objects = LocalObjectStore(data_dir / "objects", "http://test", b"secret", 3600)
    return DiffusionEngine(Settings(data_dir=data_dir), objects, device="cuda")


@pytest.mark.parametrize("family", [TinyFamily.SD15, TinyFamily.SDXL], ids=str)
def test_a_cuda_batch_gives_each_job_its_alone_image(engine: DiffusionEngine, family: TinyFamily) -> None:
    def job(job_id: int, **fields: Any) -> Any:
        values: dict[str, Any] = {"steps": 4, "tomesd": False, "safety_checker": False, "scheduler": EULER}
        params = GenerationParams(**(values | fields))
        return make_job(family.value, JobKind.TEXT2IMG, params, width=128, height=128, job_id=job_id)

    jobs = [job(index, prompt=f"a photo of a cat number {index}", seed=index) for index in range(8)]
    batched = engine.run(jobs, lambda _job: RecordingContext())
    for single, output in zip(jobs, batched, strict=True):
        assert output.meta["batch_size"] == len(jobs)
        [alone] = engine.run([single], lambda _job: RecordingContext())
        assert np.abs(pixels(output.images[0]) - pixels(alone.images[0])).mean() <= MAX_GREY_LEVELS


def test_automatic_batch_size_on_cuda(engine: DiffusionEngine) -> None:
    size = worker_max_batch(0, [engine])
    assert 1 <= size <= 16


def test_a_cuda_upscale_batch_gives_each_job_its_alone_image(tmp_path: Path) -> None:
    from dataclasses import replace

    from sdserver.engines.upscale.engine import UpscaleEngine, weights_folder
    from sdserver.engines.upscale.tiny import write_official_weights
    from sdserver.objects.base import make_object_key
    from tests.engines.upscale.test_tiling import smooth_image
    from tests.gpu.test_cuda_engines import upscale_job
    from tests.support.tiny_sd import png_bytes

    settings = Settings(data_dir=tmp_path)
    objects = LocalObjectStore(tmp_path / "objects", "http://test", b"secret", 3600)
    write_official_weights(weights_folder(settings), "RealESRGAN_x4plus", "params_ema")
    engine = UpscaleEngine(settings, objects, device="cuda", tile=64)
    jobs = []
    for index in range(6):
        picture = png_bytes(smooth_image(160, 120, seed=index))
        key = objects.put(make_object_key("uploads", "png", temp=False), picture, "image/png").key
        jobs.append(replace(upscale_job(key, "RealESRGAN_x4plus", 2.0 + index % 3), id=index + 1))
    batched = engine.run(jobs, lambda _job: RecordingContext())
    for single, output in zip(jobs, batched, strict=True):
        assert output.meta["batch_size"] == len(jobs) and output.meta["precision"] in ("fp16", "bf16")
        [alone] = engine.run([single], lambda _job: RecordingContext())
        assert np.abs(pixels(output.images[0]) - pixels(alone.images[0])).mean() <= MAX_GREY_LEVELS
