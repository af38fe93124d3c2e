"""Generation passes on tiny seeded models loaded from disk: upscale (seeded Real-ESRGAN weights in the published
layout), highres fix, panorama and self-attention guidance, and their clear failures."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sdserver.config import Settings
from sdserver.engines.base import EngineOutput, JobFailed
from sdserver.engines.diffusion.engine import DiffusionEngine
from sdserver.engines.diffusion.tiny_families.names import TinyFamily
from sdserver.engines.diffusion.tiny_families.writer import make_tiny_family_model
from sdserver.engines.upscale.tiny import write_official_weights
from sdserver.errors import JobErrorCode
from sdserver.job_params import DEFAULT_GENERATION_UPSCALER, GenerationPasses
from sdserver.jobs import JobKind
from sdserver.objects.local import LocalObjectStore
from tests.support.tiny_sd import RecordingContext, make_job, make_tiny_model, pixels

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]

MODEL = "tiny-passes"
SDXL = "tiny-sdxl-passes"


@dataclass
class World:
    data_dir: Path
    engine: DiffusionEngine

    def run(self, width: int = 64, height: int = 64, model: str = MODEL, **params: Any) -> EngineOutput:
        job = make_job(model, JobKind.TEXT2IMG, width=width, height=height, **params)
        [output] = self.engine.run([job], lambda _job: RecordingContext())
        return output


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    data_dir = tmp_path_factory.mktemp("passes-data")
    make_tiny_model(data_dir / "models", MODEL)
    make_tiny_family_model(data_dir / "models", SDXL, TinyFamily.SDXL)
    write_official_weights(data_dir / "models" / "upscalers", DEFAULT_GENERATION_UPSCALER, "params")
    objects = LocalObjectStore(data_dir / "objects", "http://test", b"secret", 3600)
    return World(data_dir, DiffusionEngine(Settings(data_dir=data_dir), objects))


def test_upscale_returns_images_at_the_upscaled_size(world: World) -> None:
    output = world.run(samples=2, passes=GenerationPasses(upscale_scale=2))
    assert [pixels(png).shape for png in output.images] == [(128, 128, 3)] * 2
    plain = pixels(world.run().images[0])
    # The upscaled image is the plain one enlarged: shrunk back, it stays close to it.
    shrunk = pixels(output.images[0])[::2, ::2]
    assert np.abs(shrunk - plain).mean() < 40


def test_upscale_without_weights_fails_naming_the_file(world: World) -> None:
    with pytest.raises(JobFailed) as failed:
        world.run(passes=GenerationPasses(upscale_scale=2, upscale_model="RealESRGAN_x4plus"))
    assert failed.value.code is JobErrorCode.MODEL_WEIGHTS_MISSING
    assert "RealESRGAN_x4plus.pth" in failed.value.message and "upscalers" in failed.value.message


def test_highres_fix_has_the_requested_size_and_differs(world: World) -> None:
    plain = world.run(width=128, height=96).images[0]
    fixed = world.run(width=128, height=96, passes=GenerationPasses(highres_fix=True)).images[0]
    assert pixels(fixed).shape == (96, 128, 3)
    assert np.abs(pixels(fixed) - pixels(plain)).mean() > 1
    again = world.run(width=128, height=96, passes=GenerationPasses(highres_fix=True)).images[0]
    assert again == fixed, "same seed, same bytes"
    with Image.open(io.BytesIO(fixed)) as image:
        assert "Hires upscale: 2, Hires upscaler: Latent" in image.text["parameters"]  # type: ignore[attr-defined]


def test_highres_fix_with_one_step_still_refines(world: World) -> None:
    ctx = RecordingContext()
    job = make_job(MODEL, JobKind.TEXT2IMG, width=128, height=128, steps=1, passes=GenerationPasses(highres_fix=True))
    [output] = world.engine.run([job], lambda _job: ctx)
    assert pixels(output.images[0]).shape == (128, 128, 3)
    assert ctx.steps[-1] == (2, 2), "one step at half size, one at full size"


def test_highres_fix_on_sdxl(world: World) -> None:
    plain = world.run(width=128, height=128, model=SDXL).images[0]
    fixed = world.run(width=128, height=128, model=SDXL, passes=GenerationPasses(highres_fix=True)).images[0]
    assert pixels(fixed).shape == (128, 128, 3)
    assert np.abs(pixels(fixed) - pixels(plain)).mean() > 1


def test_panorama_is_wider_than_tall(world: World) -> None:
    output = world.run(width=128, height=64, passes=GenerationPasses(panorama=True))
    assert pixels(output.images[0]).shape == (64, 128, 3)


def test_self_attention_runs_and_differs(world: World) -> None:
    # With token merging on, as the API's default is.
    plain = world.run(scheduler="DDIMScheduler", tomesd=True).images[0]
    guided = world.run(scheduler="DDIMScheduler", tomesd=True, passes=GenerationPasses(self_attention=True)).images[0]
    assert pixels(guided).shape == (64, 64, 3)
    assert np.abs(pixels(guided) - pixels(plain)).mean() > 0.5
    # The attention processors SAG swapped are back: the next plain job is unchanged.
    assert world.run(scheduler="DDIMScheduler", tomesd=True).images[0] == plain


def test_self_attention_refuses_float_timestep_schedulers(world: World) -> None:
    with pytest.raises(JobFailed) as failed:
        world.run(scheduler="EulerDiscreteScheduler", passes=GenerationPasses(self_attention=True))
    assert failed.value.code is JobErrorCode.UNSUPPORTED_SCHEDULER
    assert "EulerDiscreteScheduler" in failed.value.message
