"""UpscaleEngine: the job contract (params, meta, errors, progress, cancel) and a real worker running it end to end."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sdserver.config import Settings
from sdserver.database import create_db_engine
from sdserver.engines.base import JobCancelled, JobFailed
from sdserver.engines.factory import build_engines
from sdserver.engines.upscale.archs import OFFICIAL_MODELS, ArchSpec
from sdserver.engines.upscale.engine import UpscaleEngine, weights_folder
from sdserver.engines.upscale.tiny import write_official_weights, write_weights
from sdserver.errors import JobErrorCode
from sdserver.job_params import ModelLoadParams, SuperResolutionParams
from sdserver.jobs import Job, JobKind, JobSpec, JobStatus
from sdserver.jobstore.store import JobStore
from sdserver.objects.base import make_object_key
from sdserver.objects.local import LocalObjectStore
from sdserver.worker.loop import Worker
from tests.engines.upscale.test_tiling import smooth_image

SECRET = "upscale-test-signing-secret"
COMPACT = "realesr-general-x4v3"


@dataclass
class Steps:
    """A StepContext that records progress and, optionally, cancels after `cancel_after` steps."""

    cancel_after: int | None = None
    seen: list[tuple[int, int]] = field(default_factory=list)

    def step(self, done: int, total: int) -> None:
        self.seen.append((done, total))
        if self.cancel_after is not None and len(self.seen) >= self.cancel_after:
            raise JobCancelled("cancel requested")


@dataclass
class Deployment:
    settings: Settings
    objects: LocalObjectStore
    engine: UpscaleEngine

    @property
    def folder(self) -> Path:
        return weights_folder(self.settings)

    def put_input(self, image: Image.Image) -> str:
        key = make_object_key("uploads", "png", temp=False)
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        self.objects.put(key, buffer.getvalue(), "image/png")
        return key

    def job(self, model_id: str, input_key: str, scale: float = 4.0, **params: Any) -> Job:
        return Job(
            id=1, owner_key_id=1, kind=JobKind.SUPER_RESOLUTION, model_id=model_id,
            params=SuperResolutionParams(input_key=input_key, scale=scale, **params),
            output_keys=(make_object_key("outputs", "png", temp=False),), future_links=("http://x/out.png",),
            width=0, height=0, steps=0, scheduler="", status=JobStatus.RUNNING, attempts=1, max_attempts=3,
            created_at=datetime.now(UTC),
        )  # fmt: skip

    def run(self, job: Job, steps: Steps | None = None) -> tuple[Image.Image, dict[str, Any]]:
        context = steps or Steps()
        [output] = self.engine.run([job], lambda _: context)
        [png] = output.images
        return Image.open(io.BytesIO(png)), output.meta


def make_settings(data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir, base_url="http://sd.test:8000", engines=["upscale"], signing_secret=SECRET,
        job_lease_s=5.0, worker_poll_s=0.05,
    )  # fmt: skip


def make_deployment(tmp_path: Path) -> Deployment:
    """A local object store and an fp32 upscale engine (32 px tiles) over seeded official Compact weights."""
    settings = make_settings(tmp_path / "data")
    objects = LocalObjectStore(settings.objects_dir, settings.external_base_url, SECRET.encode(), settings.temp_ttl_s)
    write_official_weights(weights_folder(settings), COMPACT, "params")
    return Deployment(settings, objects, UpscaleEngine(settings, objects, precision="fp32", tile=32))


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    return make_deployment(tmp_path)


def test_claims_super_resolution_for_official_and_dropped_in_models(deployment: Deployment) -> None:
    engine = deployment.engine
    assert set(engine.kinds()) == {JobKind.SUPER_RESOLUTION}
    assert set(engine.models()) == set(OFFICIAL_MODELS)
    write_weights(deployment.folder, "4x-Custom", ArchSpec("srvgg", 4, num_conv=2, num_feat=8), "safetensors")
    engine._scanned_at = -float("inf")  # skip the rescan interval
    assert "4x-Custom" in engine.models()
    key = deployment.put_input(smooth_image(8, 8))
    assert engine.handles(deployment.job("4x-Custom", key))
    assert not engine.handles(deployment.job("nonexistent", key))
    image, meta = deployment.run(deployment.job("4x-Custom", key, 2))
    assert image.size == (16, 16) and meta["model_id"] == "4x-Custom"


def test_an_upscaler_loaded_on_another_box_is_claimed_then_pulled_from_the_object_store(
    deployment: Deployment, tmp_path: Path
) -> None:
    from sdserver.catalog.files import SOURCE_LOCAL
    from sdserver.catalog.registry import ModelKind, ModelRegistry
    from sdserver.engines.model_loader import ModelLoaderEngine

    imports = tmp_path / "imports"
    write_weights(imports, "4x-Shared", ArchSpec("srvgg", 4, num_conv=2, num_feat=8), "safetensors")
    shared = {"database_url": f"sqlite:///{tmp_path / 'shared.db'}", "models_in_object_store": "yes"}
    box_a = make_settings(tmp_path / "box-a").model_copy(update={**shared, "model_import_dirs": [imports]})
    box_b = make_settings(tmp_path / "box-b").model_copy(update=shared)
    registry = ModelRegistry(create_db_engine(box_a.sql_url))
    source = str(imports / "4x-Shared.safetensors")
    registry.begin_load(ModelKind.UPSCALER, "4x-Shared", source=source)
    params = ModelLoadParams("upscaler", SOURCE_LOCAL, source)
    load = replace(deployment.job("4x-Shared", "unused"), kind=JobKind.MODEL_LOAD, params=params)
    ModelLoaderEngine(box_a, registry, objects=deployment.objects).run([load], lambda _: Steps())
    engine_b = UpscaleEngine(box_b, deployment.objects, precision="fp32", tile=32)

    assert "4x-Shared" in engine_b.models(), "box B must claim a model it has not pulled yet"
    key = deployment.put_input(smooth_image(8, 8))
    [output] = engine_b.run([deployment.job("4x-Shared", key, 2)], lambda _: Steps())

    assert Image.open(io.BytesIO(output.images[0])).size == (16, 16)
    assert (weights_folder(box_b) / "4x-Shared.safetensors").is_file()


def test_runs_a_job_and_reports_meta_progress_and_held_models(deployment: Deployment) -> None:
    key = deployment.put_input(smooth_image(64, 40))
    steps = Steps()
    image, meta = deployment.run(deployment.job(COMPACT, key, 2.5), steps)
    assert image.format == "PNG" and image.size == (160, 100)
    assert meta == {
        "model_id": COMPACT, "scale": 2.5, "input_size": [64, 40], "output_size": [160, 100],
        "precision": "fp32", "tile": 32, "batch_size": 1,
    }  # fmt: skip
    assert steps.seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert set(deployment.engine.held_models()) == {COMPACT}
    deployment.engine.clear()
    assert set(deployment.engine.held_models()) == set()


def test_same_job_gives_the_same_bytes(deployment: Deployment) -> None:
    job = deployment.job(COMPACT, deployment.put_input(smooth_image(40, 30)), 3)
    first = deployment.engine.run([job], lambda _: Steps())[0].images
    second = deployment.engine.run([job], lambda _: Steps())[0].images
    assert first == second


def test_cancel_stops_between_tiles(deployment: Deployment) -> None:
    steps = Steps(cancel_after=2)
    with pytest.raises(JobCancelled):
        deployment.run(deployment.job(COMPACT, deployment.put_input(smooth_image(64, 64))), steps)
    assert steps.seen == [(1, 4), (2, 4)]


def test_missing_weights_name_the_file_and_folder(deployment: Deployment) -> None:
    job = deployment.job("RealESRGAN_x4plus", deployment.put_input(smooth_image(8, 8)))
    with pytest.raises(JobFailed) as failed:
        deployment.run(job)
    folder = deployment.folder.resolve()
    assert failed.value.code == "model_weights_missing"
    assert failed.value.message == (
        f"No weights for RealESRGAN_x4plus: put RealESRGAN_x4plus.pth (or .safetensors) in {folder}/"
    )


def test_junk_weights_are_unsupported(deployment: Deployment) -> None:
    (deployment.folder / "RealESRGAN_x2plus.pth").write_bytes(b"definitely not a checkpoint")
    with pytest.raises(JobFailed) as failed:
        deployment.run(deployment.job("RealESRGAN_x2plus", deployment.put_input(smooth_image(8, 8))))
    assert failed.value.code == "unsupported_weights"
    assert "RealESRGAN_x2plus.pth" in failed.value.message


def test_face_enhance_without_restorer_weights_fails_naming_the_file(deployment: Deployment) -> None:
    job = deployment.job(COMPACT, deployment.put_input(smooth_image(8, 8)), face_enhance=True)
    with pytest.raises(JobFailed) as failed:
        deployment.run(job)
    assert failed.value.code == "face_enhance_unavailable"
    assert "GFPGANv1.4.pth" in failed.value.message and "models/face_restorers" in failed.value.message
    assert "face_enhance: no" in failed.value.message


def test_missing_or_broken_input(deployment: Deployment) -> None:
    with pytest.raises(JobFailed) as failed:
        deployment.run(deployment.job(COMPACT, make_object_key("uploads", "png", temp=False)))
    assert failed.value.code is JobErrorCode.IMAGE_NOT_FOUND
    key = make_object_key("uploads", "png", temp=False)
    deployment.objects.put(key, b"\x89PNG\r\n\x1a\nthen garbage", "image/png")
    with pytest.raises(JobFailed) as failed:
        deployment.run(deployment.job(COMPACT, key))
    assert failed.value.code is JobErrorCode.INVALID_IMAGE


def test_inputs_over_the_pixel_cap_are_refused(deployment: Deployment) -> None:
    engine = UpscaleEngine(deployment.settings, deployment.objects, precision="fp32", max_input_pixels=300)
    deployment.engine = engine
    with pytest.raises(JobFailed) as failed:
        deployment.run(deployment.job(COMPACT, deployment.put_input(smooth_image(20, 20))))
    assert failed.value.code is JobErrorCode.INPUT_TOO_LARGE and "20x20" in failed.value.message


def test_weights_replaced_on_disk_are_reloaded(deployment: Deployment) -> None:
    key = deployment.put_input(smooth_image(16, 16))
    before = np.asarray(deployment.run(deployment.job(COMPACT, key, 1))[0])
    time.sleep(0.01)
    write_official_weights(deployment.folder, COMPACT, "params", seed=9)
    after = np.asarray(deployment.run(deployment.job(COMPACT, key, 1))[0])
    assert not np.array_equal(before, after)


def test_build_engines_makes_the_upscale_engine(deployment: Deployment) -> None:
    [engine] = build_engines(deployment.settings, deployment.objects)
    assert isinstance(engine, UpscaleEngine) and engine.name == "upscale"


def test_a_real_worker_completes_a_super_resolution_job(deployment: Deployment) -> None:
    settings, objects = deployment.settings, deployment.objects
    db = create_db_engine(settings.sql_url)
    store = JobStore(db)
    input_key = deployment.put_input(smooth_image(48, 36).convert("RGBA"))
    output_key = make_object_key("outputs", "png", temp=False)
    job = store.submit(
        JobSpec(
            owner_key_id=1,
            kind=JobKind.SUPER_RESOLUTION,
            model_id=COMPACT,
            params=SuperResolutionParams(input_key=input_key, scale=2),
            output_keys=(output_key,),
            future_links=(objects.url_for(output_key),),
            width=48,
            height=36,
        )
    )
    stop = threading.Event()
    worker = Worker(settings, store, objects, [deployment.engine], "upscale-test-worker", idle_wait_s=0.05)
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not (done := store.get(job.id, owner_key_id=None)).status.is_terminal:
            assert time.monotonic() < deadline, f"job never finished: {done}"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(15)
        db.dispose()
    assert done.status is JobStatus.SUCCEEDED, done.error_message
    assert done.result["output_size"] == [96, 72] and done.result["precision"] == "fp32"
    assert done.progress_step == done.progress_total == 4
    output = Image.open(io.BytesIO(objects.get(output_key)))
    assert output.format == "PNG" and output.size == (96, 72) and output.mode == "RGBA"


def test_torch_loads_only_when_the_upscale_engine_is_built(tmp_path: Path) -> None:
    """The API process imports the worker seam and the job spine; none of that may pull torch in."""
    script = (
        "import sys\n"
        "import sdserver.api, sdserver.engines.base, sdserver.worker.loop, sdserver.worker.main, sdserver.engines\n"
        "assert 'torch' not in sys.modules, 'torch imported by the API side'\n"
        "import sdserver.engines.upscale\n"
        "assert 'torch' not in sys.modules, 'torch imported by the package marker'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=60)
