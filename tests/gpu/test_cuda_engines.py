"""Real CUDA runs of every engine: diffusion (text2img, img2img, inpaint, ControlNet) and upscale in their GPU
precision, CUDA output against the CPU fp32 reference, and out-of-memory handling. Skipped without a CUDA device;
scripts/device-check.sh runs them on a lent GPU."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sdserver.config import Settings
from sdserver.engines.base import DeviceOutOfMemory, EngineOutput
from sdserver.engines.diffusion.engine import DiffusionEngine
from sdserver.engines.upscale.engine import UpscaleEngine, weights_folder
from sdserver.engines.upscale.tiny import write_official_weights
from sdserver.job_params import ControlNetMode, ControlNetParams, ControlNetUnit, SuperResolutionParams
from sdserver.jobs import Job, JobKind, JobStatus
from sdserver.objects.base import make_object_key
from sdserver.objects.local import LocalObjectStore
from tests.support.tiny_controlnet import make_tiny_controlnet
from tests.support.tiny_sd import RecordingContext, generation_params, make_job, make_tiny_model, pixels, png_bytes

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

MODEL = "tiny-gpu"
INPAINT_MODEL = "tiny-gpu-inpaint"
CONTROLNET = "tiny-gpu-cn"
SECRET = b"gpu-test-signing-secret"
COMPACT = "realesr-general-x4v3"
RRDB = "RealESRGAN_x4plus"


@dataclass
class World:
    settings: Settings
    objects: LocalObjectStore
    picture_key: str
    mask_key: str

    def put(self, image: Image.Image) -> str:
        key = make_object_key("uploads", "png", temp=False)
        self.objects.put(key, png_bytes(image), "image/png")
        return key


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    data_dir = tmp_path_factory.mktemp("gpu") / "data"
    settings = Settings(data_dir=data_dir, signing_secret=SECRET.decode())
    models = data_dir / "models"
    make_tiny_model(models, MODEL, seed=3)
    make_tiny_model(models, INPAINT_MODEL, seed=4, inpainting=True)
    make_tiny_controlnet(models, CONTROLNET)
    write_official_weights(weights_folder(settings), COMPACT, "params")
    write_official_weights(weights_folder(settings), RRDB, "params_ema")
    objects = LocalObjectStore(settings.objects_dir, settings.external_base_url, SECRET, settings.temp_ttl_s)
    ramp = np.linspace(0, 255, 96, dtype=np.uint8)
    picture = Image.fromarray(np.stack([np.tile(ramp, (96, 1))] * 3, axis=-1))
    mask = Image.new("L", (96, 96), 0)
    mask.paste(255, (24, 24, 72, 72))
    world = World(settings, objects, "", "")
    world.picture_key, world.mask_key = world.put(picture), world.put(mask)
    return world


@pytest.fixture
def no_memory_cap() -> Iterator[None]:
    yield
    torch.cuda.set_per_process_memory_fraction(1.0)
    torch.cuda.empty_cache()


def run(engine: Any, job: Job) -> EngineOutput:
    [output] = engine.run([job], lambda _job: RecordingContext())
    return output


def generation_job(world: World, kind: JobKind, model: str = MODEL, size: int = 64, **fields: Any) -> Job:
    if kind is not JobKind.TEXT2IMG:
        fields.setdefault("init_image_key", world.picture_key)
        fields.setdefault("strength", 0.7)
    if kind is JobKind.INPAINT:
        fields.setdefault("mask_image_key", world.mask_key)
    return make_job(model, kind, width=size, height=size, **fields)


@pytest.mark.parametrize(
    ("kind", "model"),
    [(JobKind.TEXT2IMG, MODEL), (JobKind.IMG2IMG, MODEL), (JobKind.INPAINT, MODEL), (JobKind.INPAINT, INPAINT_MODEL)],
)
def test_diffusion_runs_on_cuda_in_fp16_and_repeats_exactly(world: World, kind: JobKind, model: str) -> None:
    engine = DiffusionEngine(world.settings, world.objects, device="cuda")
    first = run(engine, generation_job(world, kind, model))
    again = run(engine, generation_job(world, kind, model))
    assert first.meta["precision"] == "fp16"
    [loaded] = engine._loaded.values()
    assert next(iter(loaded.pipelines.values())).unet.device.type == "cuda"
    assert pixels(first.images[0]).shape == (64, 64, 3)
    assert first.images == again.images  # same seed, same device: same bytes


@pytest.mark.parametrize("kind", [JobKind.TEXT2IMG, JobKind.IMG2IMG])
def test_cuda_images_match_the_cpu_fp32_reference(world: World, kind: JobKind) -> None:
    # The noise comes from CPU generators, so every device and precision starts from the same latents. CUDA fp32
    # must match the CPU (measured on an H200: 0.04 grey levels). fp16/bf16 are only reported: the tiny model's random
    # weights amplify half-precision rounding (~45 grey levels, same pixel spread, no NaN), while the SD-1.5-shaped
    # bench model keeps fp16 within 0.15% of fp32 (bench P8).
    def image(device: str, precision: Any) -> Any:
        engine = DiffusionEngine(world.settings, world.objects, device=device, precision=precision)
        return pixels(run(engine, generation_job(world, kind)).images[0])

    cpu32, gpu32, gpu16, gpubf16 = (
        image("cpu", "fp32"),
        image("cuda", "fp32"),
        image("cuda", "fp16"),
        image("cuda", "bf16"),
    )
    diffs = {
        name: float(np.abs(other - cpu32).mean())
        for name, other in (("fp32", gpu32), ("fp16", gpu16), ("bf16", gpubf16))
    }
    spread = {name: float(other.std()) for name, other in (("cpu32", cpu32), ("fp16", gpu16), ("bf16", gpubf16))}
    print(f"{kind.value}: mean |cuda - cpu fp32| by cuda precision {diffs}; pixel std {spread}")
    assert diffs["fp32"] <= 1.0


def test_controlnet_runs_on_cuda(world: World) -> None:
    params = ControlNetParams(
        generation=generation_params(from_image=False),
        units=(ControlNetUnit(CONTROLNET),),
        control_image_key=world.picture_key,
        mode=ControlNetMode.TEXT2IMG,
    )
    job = make_job(MODEL, JobKind.CONTROLNET, params, width=64, height=64)
    engine = DiffusionEngine(world.settings, world.objects, device="cuda")
    first, again = run(engine, job), run(engine, job)
    assert first.meta["precision"] == "fp16" and first.images == again.images
    assert pixels(first.images[0]).shape == (64, 64, 3)


def test_diffusion_out_of_memory_fails_the_job_and_the_engine_recovers(world: World, no_memory_cap: None) -> None:
    engine = DiffusionEngine(world.settings, world.objects, device="cuda")
    run(engine, generation_job(world, JobKind.TEXT2IMG))  # loaded while memory is free
    torch.cuda.empty_cache()
    # Little more than the weights already held: a 1024² job's activations cannot fit.
    torch.cuda.set_per_process_memory_fraction(
        (torch.cuda.memory_allocated() + 64 * 2**20) / torch.cuda.get_device_properties(0).total_memory
    )
    with pytest.raises(DeviceOutOfMemory):
        run(engine, generation_job(world, JobKind.TEXT2IMG, size=1024))
    torch.cuda.set_per_process_memory_fraction(1.0)
    after = run(engine, generation_job(world, JobKind.TEXT2IMG))
    assert pixels(after.images[0]).shape == (64, 64, 3)


def upscale_job(key: str, model: str, scale: float = 4.0) -> Job:
    return Job(
        id=1, owner_key_id=1, kind=JobKind.SUPER_RESOLUTION, model_id=model,
        params=SuperResolutionParams(input_key=key, scale=scale),
        output_keys=(make_object_key("outputs", "png", temp=False),), future_links=(), width=0, height=0, steps=0,
        scheduler="", status=JobStatus.RUNNING, attempts=1, max_attempts=3, created_at=datetime.now(UTC),
    )  # fmt: skip


@pytest.mark.parametrize("model", [COMPACT, RRDB])
def test_upscale_on_cuda_matches_the_cpu_fp32_reference(world: World, model: str) -> None:
    gpu_engine = UpscaleEngine(world.settings, world.objects, device="cuda")
    gpu = run(gpu_engine, upscale_job(world.picture_key, model))
    cpu = run(
        UpscaleEngine(world.settings, world.objects, device="cpu", precision="fp32"),
        upscale_job(world.picture_key, model),
    )
    assert gpu.meta["precision"] in ("fp16", "bf16")
    with Image.open(io.BytesIO(gpu.images[0])) as image:
        assert image.size == (384, 384)
    difference = float(np.abs(pixels(gpu.images[0]) - pixels(cpu.images[0])).mean())
    print(f"{model}: mean |cuda - cpu fp32| = {difference:.3f} grey levels")
    assert difference <= 1.5


def test_upscale_halves_its_tile_when_the_device_runs_out_of_memory(world: World, no_memory_cap: None) -> None:
    big = world.put(Image.effect_noise((1024, 1024), 40).convert("RGB"))
    engine = UpscaleEngine(world.settings, world.objects, device="cuda", tile=1024)
    run(engine, upscale_job(world.picture_key, RRDB))  # weights loaded while memory is free
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(
        (torch.cuda.memory_allocated() + 1536 * 2**20) / torch.cuda.get_device_properties(0).total_memory
    )
    output = run(engine, upscale_job(big, RRDB, scale=2.0))
    with Image.open(io.BytesIO(output.images[0])) as image:
        assert image.size == (2048, 2048)
    print(f"tile after out-of-memory retries: {output.meta['tile']}")
    assert output.meta["tile"] < 1024
