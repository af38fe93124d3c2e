"""The upscale engine with face_enhance: the restorer's weights are checked first, faces are restored in the
upscaled output, and the reply's meta says which restorer ran on how many faces."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sdserver.catalog.layout import models_dir_for
from sdserver.engines.restore.restorer import restorer_folder
from sdserver.engines.upscale.engine import UpscaleEngine
from tests.engines.restore.faces import face_on_canvas, no_face_image
from tests.engines.upscale.test_engine import COMPACT, Deployment, deployment  # noqa: F401


@pytest.fixture
def with_restorer(deployment: Deployment, restorer_weights: Path) -> Deployment:  # noqa: F811
    folder = restorer_folder(models_dir_for(deployment.settings))
    folder.mkdir(parents=True)
    os.link(restorer_weights / "GFPGANv1.4.pth", folder / "GFPGANv1.4.pth")
    # Whole-image upscales: the shared fixture's 32 px tiles make a 176 px input many times slower.
    engine = UpscaleEngine(deployment.settings, deployment.objects, precision="fp32")
    return replace(deployment, engine=engine)


def test_without_faces_the_output_is_the_plain_upscale(with_restorer: Deployment) -> None:
    key = with_restorer.put_input(no_face_image(48, 32))
    plain, _ = with_restorer.run(with_restorer.job(COMPACT, key, 2.0))
    enhanced, meta = with_restorer.run(with_restorer.job(COMPACT, key, 2.0, face_enhance=True))
    assert enhanced.size == plain.size == (96, 64)
    assert np.array_equal(np.asarray(enhanced), np.asarray(plain))
    assert meta["face_restorer"] == "gfpgan-1.4" and meta["faces_restored"] == 0


def test_a_face_is_restored_in_the_upscaled_output(with_restorer: Deployment) -> None:
    # Small, so the upscale is quick; the aligned crop then covers the whole canvas.
    source, (x, y, w, h) = face_on_canvas(0, 0, size=(176, 176))
    key = with_restorer.put_input(source)
    plain, meta_plain = with_restorer.run(with_restorer.job(COMPACT, key, 2.0))
    enhanced, meta = with_restorer.run(with_restorer.job(COMPACT, key, 2.0, face_enhance=True))
    assert enhanced.size == plain.size == (source.width * 2, source.height * 2)
    assert meta["faces_restored"] == 1 and "face_restorer" not in meta_plain
    before, after = np.asarray(plain).astype(int), np.asarray(enhanced).astype(int)
    assert np.abs(after - before)[y * 2 : (y + h) * 2, x * 2 : (x + w) * 2].mean() > 10
