"""Generation's face_enhance pass: the outputs' faces restored by the super-resolution engine's restorer (official
GFPGAN layout, seeded weights), images without faces unchanged, missing weights the clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdserver.config import Settings
from sdserver.engines.base import JobFailed
from sdserver.engines.diffusion.engine import DiffusionEngine
from sdserver.engines.diffusion.passes import PassRunner
from sdserver.engines.restore.tiny import write_restorer_weights
from sdserver.engines.upscale.engine import UpscaleEngine
from sdserver.errors import JobErrorCode
from sdserver.job_params import GenerationPasses
from sdserver.jobs import JobKind
from sdserver.objects.local import LocalObjectStore
from tests.engines.restore.faces import face_on_canvas
from tests.support.tiny_sd import RecordingContext, make_job, make_tiny_model, pixels

MODEL = "tiny-faces"


def _runner(data_dir: Path) -> PassRunner:
    objects = LocalObjectStore(data_dir / "objects", "http://test", b"secret", 3600)
    return PassRunner(UpscaleEngine(Settings(data_dir=data_dir), objects))


def test_face_enhance_restores_each_face_and_leaves_faceless_images_alone(tmp_path: Path) -> None:
    write_restorer_weights(tmp_path / "models" / "face_restorers", "gfpgan-1.4", seed=3)
    face, (x, y, w, h) = face_on_canvas()
    plain = Image.fromarray(np.full((96, 128, 3), 90, dtype=np.uint8))
    images, meta = _runner(tmp_path).restore_faces([face, plain], GenerationPasses(face_enhance=True))
    assert meta == {"face_restorer": "gfpgan-1.4", "faces_restored": [1, 0]}
    assert [image.size for image in images] == [face.size, (128, 96)]
    before, after = np.asarray(face).astype(int), np.asarray(images[0]).astype(int)
    change = np.abs(after - before).max(axis=2)
    assert change[y : y + h, x : x + w].mean() > 10  # the face was replaced ...
    assert not change[:, : x - w].any()  # ... in place: far to its left nothing moved
    assert np.array_equal(np.asarray(images[1]), np.asarray(plain))


def test_no_face_enhance_changes_nothing(tmp_path: Path) -> None:
    face, _ = face_on_canvas(0, 0, size=(176, 176))
    images, meta = _runner(tmp_path).restore_faces([face], GenerationPasses())
    assert images == [face] and meta == {}


def test_a_generation_job_with_face_enhance_fails_clearly_without_weights(tmp_path: Path) -> None:
    make_tiny_model(tmp_path / "models", MODEL)
    objects = LocalObjectStore(tmp_path / "objects", "http://test", b"secret", 3600)
    engine = DiffusionEngine(Settings(data_dir=tmp_path), objects)
    job = make_job(MODEL, JobKind.TEXT2IMG, width=64, height=64, passes=GenerationPasses(face_enhance=True))
    with pytest.raises(JobFailed) as failed:
        engine.run([job], lambda _job: RecordingContext())
    assert failed.value.code is JobErrorCode.FACE_ENHANCE_UNAVAILABLE
    assert "face_restorers" in failed.value.message and "GFPGANv1.4" in failed.value.message
    # With weights the same job runs: no face in a tiny model's noise, so the picture is the plain one.
    write_restorer_weights(tmp_path / "models" / "face_restorers", "gfpgan-1.4", seed=3)
    [enhanced] = engine.run([job], lambda _job: RecordingContext())
    plain_job = make_job(MODEL, JobKind.TEXT2IMG, width=64, height=64)
    [plain] = engine.run([plain_job], lambda _job: RecordingContext())
    assert enhanced.meta["faces_restored"] == [0] and enhanced.meta["face_restorer"] == "gfpgan-1.4"
    assert np.array_equal(pixels(enhanced.images[0]), pixels(plain.images[0]))
