"""face_enhance end to end on seeded official-layout weights: each face found is restored and pasted where it is,
the rest of the upscaled image is untouched, and images without faces come back as they were."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdserver.engines.restore.enhance import FaceEnhancer
from sdserver.engines.restore.restorer import RestorerName
from tests.engines.restore.faces import face_on_canvas, no_face_image


def _upscaled(image: Image.Image, scale: int) -> Image.Image:
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.BICUBIC)


@pytest.mark.parametrize(("name", "scale"), [("gfpgan-1.4", 2), ("codeformer", 1)])
def test_the_face_is_restored_in_place_and_nothing_else_changes(
    restorer_weights: Path, name: RestorerName, scale: int
) -> None:
    source, (x, y, w, h) = face_on_canvas(130, 60)
    upscaled = _upscaled(source, scale)
    result = FaceEnhancer(restorer_weights, name, device="cpu", precision="fp32").enhance(source, upscaled)
    assert result.faces == 1
    assert result.image.size == upscaled.size and result.image.mode == "RGB"
    before, after = np.asarray(upscaled).astype(int), np.asarray(result.image).astype(int)
    changed = np.abs(after - before).sum(axis=2) > 0
    # The face itself is replaced by the restorer's output (random weights: nothing like the photo).
    face = (slice(y * scale, (y + h) * scale), slice(x * scale, (x + w) * scale))
    assert np.abs(after[face] - before[face]).mean() > 10
    # What changed is centred on the face and no wider than the aligned crop (about 2.5 face widths).
    rows, cols = np.nonzero(changed)
    centre = np.array([(x + w / 2) * scale, (y + h / 2) * scale])
    assert np.abs(np.array([cols.mean(), rows.mean()]) - centre).max() < 0.25 * w * scale
    assert cols.max() - cols.min() < 3 * w * scale and rows.max() - rows.min() < 3 * h * scale
    assert not changed[:, : int((x - w) * scale)].any()


def test_an_image_without_faces_comes_back_untouched_without_loading_a_restorer(tmp_path: Path) -> None:
    source = no_face_image()
    upscaled = _upscaled(source, 2)
    # The folder is empty: a restorer load would fail, so none is attempted.
    result = FaceEnhancer(tmp_path, "gfpgan-1.4", device="cpu").enhance(source, upscaled)
    assert result.faces == 0 and result.image is upscaled


def test_sixteen_bit_grey_is_left_alone(tmp_path: Path) -> None:
    source, _ = face_on_canvas()
    grey16 = source.convert("I;16")
    result = FaceEnhancer(tmp_path, "codeformer", device="cpu").enhance(grey16, grey16)
    assert result.faces == 0 and result.image is grey16


def test_greyscale_with_alpha_keeps_its_mode_and_alpha(restorer_weights: Path) -> None:
    source, (x, y, w, h) = face_on_canvas(0, 0, size=(176, 176))
    grey = source.convert("L")
    alpha = Image.linear_gradient("L").resize(grey.size)
    source_la = Image.merge("LA", (grey, alpha))
    upscaled = _upscaled(source_la, 2)
    result = FaceEnhancer(restorer_weights, "gfpgan-1.4", device="cpu", precision="fp32").enhance(source_la, upscaled)
    assert result.faces == 1 and result.image.mode == "LA" and result.image.size == upscaled.size
    assert np.array_equal(np.asarray(result.image.getchannel("A")), np.asarray(upscaled.getchannel("A")))
    before = np.asarray(upscaled.getchannel("L")).astype(int)
    after = np.asarray(result.image.getchannel("L")).astype(int)
    assert np.abs(after - before)[y * 2 : (y + h) * 2, x * 2 : (x + w) * 2].mean() > 10
