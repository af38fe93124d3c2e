"""DiffusionEngine on tiny seeded models loaded from disk: the three kinds, every parameter, cancel, and the cache."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sdserver.config import Settings
from sdserver.engines.base import DeviceFailure, DeviceOutOfMemory, EngineOutput, JobCancelled, JobFailed
from sdserver.engines.diffusion import engine as engine_module
from sdserver.engines.diffusion.engine import DiffusionEngine
from sdserver.engines.precision import Placement
from sdserver.errors import JobErrorCode
from sdserver.jobs import Job, JobKind
from sdserver.objects.base import make_object_key
from sdserver.objects.local import LocalObjectStore
from tests.support.tiny_sd import RecordingContext, make_job, make_tiny_model, pixels, png_bytes

# diffusers hands torch tensors to numpy 2 APIs in ways numpy deprecates; not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*"),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]

FOLDER_MODEL = "tiny-folder"
FILE_MODEL = "tiny-file"


@dataclass
class World:
    data_dir: Path
    objects: LocalObjectStore
    engine: DiffusionEngine
    init_key: str
    mask_key: str
    init: Image.Image

    def run(self, job: Job, ctx: RecordingContext | None = None) -> EngineOutput:
        context = ctx or RecordingContext()
        [output] = self.engine.run([job], lambda _job: context)
        return output

    def image(self, model: str = FOLDER_MODEL, kind: JobKind = JobKind.TEXT2IMG, **params: Any) -> bytes:
        if kind is not JobKind.TEXT2IMG:
            params.setdefault("init_image_key", self.init_key)
            params.setdefault("strength", 0.7)
        if kind is JobKind.INPAINT:
            params.setdefault("mask_image_key", self.mask_key)
        return self.run(make_job(model, kind, **params)).images[0]


def _init_image() -> Image.Image:
    """A smooth gradient with a square: easy to tell apart from the tiny model's noise."""
    ramp = np.linspace(0, 255, 80, dtype=np.uint8)
    array = np.stack([np.tile(ramp, (80, 1)), np.tile(ramp[:, None], (1, 80)), np.full((80, 80), 90, np.uint8)], -1)
    array[20:50, 20:50] = (250, 30, 30)
    # 80x80 on purpose: the engine must resize inputs to the job's size.
    return Image.fromarray(array, "RGB")


def _half_mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))  # right half white: repaint it
    return mask


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    data_dir = tmp_path_factory.mktemp("engine-data")
    make_tiny_model(data_dir / "models", FOLDER_MODEL)
    make_tiny_model(data_dir / "models", FILE_MODEL, single_file=True)
    objects = LocalObjectStore(data_dir / "objects", "http://test", b"secret", 3600)
    init = _init_image()
    init_key = objects.put(make_object_key("uploads", "png", temp=False), png_bytes(init), "image/png").key
    mask_key = objects.put(make_object_key("uploads", "png", temp=False), png_bytes(_half_mask()), "image/png").key
    engine = DiffusionEngine(Settings(data_dir=data_dir), objects, max_loaded=2)
    return World(data_dir, objects, engine, init_key, mask_key, init.resize((64, 64), Image.Resampling.LANCZOS))


@pytest.mark.parametrize("kind", [JobKind.TEXT2IMG, JobKind.IMG2IMG, JobKind.INPAINT], ids=str)
@pytest.mark.parametrize("model", [FOLDER_MODEL, FILE_MODEL])
def test_each_kind_makes_samples_of_the_job_size(world: World, kind: JobKind, model: str) -> None:
    params: dict[str, Any] = {"samples": 3}
    if kind is not JobKind.TEXT2IMG:
        params.update(init_image_key=world.init_key, strength=0.8)
    if kind is JobKind.INPAINT:
        params["mask_image_key"] = world.mask_key
    job = make_job(model, kind, width=64, height=96, **params)
    output = world.run(job)
    assert len(output.images) == 3
    assert all(pixels(png).shape == (96, 64, 3) for png in output.images)
    assert len(set(output.images)) == 3, "each sample has its own noise"
    assert output.meta["seed"] == 1234
    assert output.meta["precision"] == world.engine.placement.precision


def test_single_file_and_folder_give_identical_images(world: World) -> None:
    # Pixels, not bytes: the PNG `parameters` text names each model.
    assert np.array_equal(pixels(world.image(FOLDER_MODEL)), pixels(world.image(FILE_MODEL)))


@pytest.mark.parametrize("kind", [JobKind.TEXT2IMG, JobKind.IMG2IMG, JobKind.INPAINT], ids=str)
def test_same_seed_same_bytes_other_seed_other_bytes(world: World, kind: JobKind) -> None:
    first = world.image(kind=kind, seed=99)
    assert world.image(kind=kind, seed=99) == first
    assert world.image(kind=kind, seed=100) != first


def test_sample_i_uses_seed_plus_i(world: World) -> None:
    batch = world.run(make_job(FOLDER_MODEL, samples=2, seed=500)).images
    # Same noise; batched maths round differently, so close rather than byte-identical.
    assert np.abs(pixels(batch[1]) - pixels(world.image(seed=501))).mean() < 2
    assert np.abs(pixels(batch[1]) - pixels(world.image(seed=502))).mean() > 20


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        (JobKind.TEXT2IMG, "steps", 5),
        (JobKind.TEXT2IMG, "guidance_scale", 2.0),
        (JobKind.TEXT2IMG, "negative_prompt", "ugly blurry"),
        (JobKind.TEXT2IMG, "prompt", "a red house"),
        (JobKind.TEXT2IMG, "clip_skip", 2),
        (JobKind.IMG2IMG, "strength", 0.3),
        (JobKind.IMG2IMG, "guidance_scale", 2.0),
        (JobKind.IMG2IMG, "clip_skip", 2),
        (JobKind.INPAINT, "strength", 0.3),
        (JobKind.INPAINT, "negative_prompt", "ugly blurry"),
    ],
    ids=lambda value: str(value),
)
def test_each_parameter_changes_the_image(world: World, kind: JobKind, field: str, value: Any) -> None:
    # 4 steps: strength picks int(steps * strength) of them, so 0.3 runs 1 step where the default 0.7 runs 2.
    base: dict[str, Any] = {"steps": 4}
    assert world.image(kind=kind, **{**base, field: value}) != world.image(kind=kind, **base)


def test_clip_skip_with_a_negative_prompt_and_no_guidance(world: World) -> None:
    images = {
        world.image(clip_skip=2, negative_prompt="ugly"),
        world.image(clip_skip=2),
        world.image(clip_skip=2, guidance_scale=1.0),
    }
    assert len(images) == 3


def test_clip_skip_is_reported_as_applied(world: World) -> None:
    job = make_job(FOLDER_MODEL, clip_skip=8)
    # The tiny text encoder has 2 layers: skipping 7 is impossible, so the penultimate one is used and reported.
    assert world.run(job).meta["clip_skip"] == 2
    assert world.run(make_job(FOLDER_MODEL, clip_skip=None)).meta["clip_skip"] is None
    assert world.image(clip_skip=1) == world.image(clip_skip=None)


def test_inpaint_keeps_unmasked_pixels(world: World) -> None:
    png = world.image(kind=JobKind.INPAINT, strength=1.0)
    result, original = pixels(png), np.asarray(world.init, dtype=np.int16)
    # Left half is black in the mask: kept (a few columns near the seam are feathered).
    assert np.abs(result[:, :28] - original[:, :28]).max() <= 1
    assert np.abs(result[:, 36:] - original[:, 36:]).mean() > 20, "the white half is repainted"


def test_img2img_at_zero_strength_returns_the_input(world: World) -> None:
    png = world.image(kind=JobKind.IMG2IMG, strength=0.0)
    assert np.array_equal(pixels(png), np.asarray(world.init, dtype=np.int16))


def test_one_model_serves_all_kinds_with_the_same_weights(world: World) -> None:
    world.image()
    [loaded] = [m for m in world.engine._loaded.values() if m.model_id == FOLDER_MODEL]
    unets = {id(pipeline.unet) for pipeline in loaded.pipelines.values()}
    vaes = {id(pipeline.vae) for pipeline in loaded.pipelines.values()}
    encoders = {id(pipeline.text_encoder) for pipeline in loaded.pipelines.values()}
    assert len(loaded.pipelines) == 3
    assert len(unets) == len(vaes) == len(encoders) == 1


def test_progress_is_reported_every_step(world: World) -> None:
    ctx = RecordingContext()
    world.run(make_job(FOLDER_MODEL, steps=3), ctx)
    assert ctx.steps == [(0, 3), (1, 3), (2, 3), (3, 3)]


def test_cancel_stops_the_pipeline(world: World) -> None:
    ctx = RecordingContext(cancel_at=2)
    with pytest.raises(JobCancelled):
        world.run(make_job(FOLDER_MODEL, steps=10), ctx)
    assert ctx.steps[-1] == (2, 10)


def test_cancel_before_start_loads_nothing(world: World) -> None:
    ctx = RecordingContext(cancel_at=0)
    with pytest.raises(JobCancelled):
        world.run(make_job("not-even-there"), ctx)


def test_unknown_model_fails_as_not_found(world: World) -> None:
    with pytest.raises(JobFailed) as failure:
        world.run(make_job("no-such-model"))
    assert (failure.value.code, failure.value.message) == ("model_not_found", "Model id not found")


def test_missing_init_image_fails_clearly(world: World) -> None:
    missing = make_object_key("uploads", "png", temp=False)
    with pytest.raises(JobFailed) as failure:
        world.run(make_job(FOLDER_MODEL, JobKind.IMG2IMG, init_image_key=missing, strength=0.5))
    assert failure.value.code is JobErrorCode.IMAGE_NOT_FOUND


def test_models_lists_what_is_on_disk(world: World) -> None:
    assert {FOLDER_MODEL, FILE_MODEL} <= set(world.engine.models() or ())
    assert world.engine.handles(make_job(FOLDER_MODEL, JobKind.INPAINT))
    assert not world.engine.handles(make_job(FOLDER_MODEL, JobKind.SUPER_RESOLUTION))
    assert not world.engine.handles(make_job("../escape"))


@pytest.fixture
def small_cache(tmp_path: Path) -> Iterator[tuple[DiffusionEngine, Path]]:
    for name in ("first", "second"):
        make_tiny_model(tmp_path / "models", name, seed=len(name))
    objects = LocalObjectStore(tmp_path / "objects", "http://test", b"secret", 3600)
    engine = DiffusionEngine(Settings(data_dir=tmp_path), objects, max_loaded=1, precision="fp32")
    yield engine, tmp_path
    engine.clear()


def test_lru_keeps_the_most_recent_model(small_cache: tuple[DiffusionEngine, Path]) -> None:
    engine, _ = small_cache
    engine.run([make_job("first")], lambda _job: RecordingContext())
    assert set(engine.held_models()) == {"first"}
    engine.run([make_job("second")], lambda _job: RecordingContext())
    assert set(engine.held_models()) == {"second"}
    engine.clear()
    assert set(engine.held_models()) == set()


def test_model_deleted_after_loading_fails_as_not_found(small_cache: tuple[DiffusionEngine, Path]) -> None:
    engine, data_dir = small_cache
    engine.run([make_job("first")], lambda _job: RecordingContext())
    shutil.rmtree(data_dir / "models" / "diffusers" / "first")
    with pytest.raises(JobFailed) as failure:
        engine.run([make_job("first")], lambda _job: RecordingContext())
    assert failure.value.code == "model_not_found"
    assert set(engine.held_models()) == set()


def test_a_batch_of_jobs_gives_one_output_each(small_cache: tuple[DiffusionEngine, Path]) -> None:
    engine, _ = small_cache
    jobs = [make_job("first", job_id=1, seed=1), make_job("first", job_id=2, seed=2, samples=2)]
    outputs = engine.run(jobs, lambda _job: RecordingContext())
    assert [len(output.images) for output in outputs] == [1, 2]
    assert [output.meta["seed"] for output in outputs] == [1, 2]
    assert outputs[0].meta["precision"] == "fp32"


def test_device_out_of_memory_frees_and_reports(
    small_cache: tuple[DiffusionEngine, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _ = small_cache

    def exhausted(*_args: object, **_kwargs: object) -> EngineOutput:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine_module, "run_job", exhausted)
    with pytest.raises(DeviceOutOfMemory, match="out of memory on cpu running model first"):
        engine.run([make_job("first")], lambda _job: RecordingContext())


def test_other_device_errors_restart_the_worker(
    small_cache: tuple[DiffusionEngine, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _ = small_cache

    def broken(*_args: object, **_kwargs: object) -> EngineOutput:
        raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(engine_module, "run_job", broken)
    with pytest.raises(DeviceFailure, match="illegal memory access"):
        engine.run([make_job("first")], lambda _job: RecordingContext())


def test_low_free_memory_evicts_before_the_count_limit(tmp_path: Path) -> None:
    """Two slots, but the device says it has no room for a second model: the first goes before the second loads."""
    for name in ("first", "second"):
        make_tiny_model(tmp_path / "models", name, seed=len(name))
    objects = LocalObjectStore(tmp_path / "objects", "http://test", b"secret", 3600)
    free = {"bytes": 64 * 1024**3}
    engine = DiffusionEngine(
        Settings(data_dir=tmp_path), objects, max_loaded=2, precision="fp32", memory_probe=lambda: free["bytes"]
    )
    try:
        engine.run([make_job("first")], lambda _job: RecordingContext())
        engine.run([make_job("second")], lambda _job: RecordingContext())
        assert set(engine.held_models()) == {"first", "second"}, "plenty of memory: both stay"
        free["bytes"] = 1024
        engine.run([make_job("first")], lambda _job: RecordingContext())
        assert set(engine.held_models()) == {"first", "second"}, "a model already loaded needs no room"
        engine.clear()
        engine.run([make_job("first")], lambda _job: RecordingContext())
        engine.run([make_job("second")], lambda _job: RecordingContext())
        assert set(engine.held_models()) == {"second"}, "no room: the least recently used one was unloaded"
    finally:
        engine.clear()


def test_model_footprint_counts_weights_at_the_engine_precision(tmp_path: Path) -> None:
    from sdserver.catalog.layout import find_model

    make_tiny_model(tmp_path / "models", "sized")
    source = find_model(tmp_path / "models", "sized")
    assert source is not None
    weights = [entry for entry in source.path.rglob("*.safetensors")]
    on_disk = sum(entry.stat().st_size for entry in weights)
    fp32 = engine_module.model_footprint(source, Placement("cpu", "fp32"))
    # The tiny model is saved in fp32: its tensors are the files less their JSON headers.
    assert weights and 0.9 * on_disk < fp32 <= on_disk
    assert engine_module.model_footprint(source, Placement("cpu", "bf16")) == fp32 // 2


def test_host_available_memory_reads_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemAvailable:   1000 kB\n")
    assert engine_module.host_available_memory(meminfo) == 1000 * 1024
    meminfo.write_text("nothing useful\n")
    assert engine_module.host_available_memory(meminfo) is None
    assert engine_module.host_available_memory(tmp_path / "missing") is None
    assert engine_module.free_device_memory("cpu") is not None
