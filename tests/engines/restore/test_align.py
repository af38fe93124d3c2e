"""Alignment geometry: the crop lands on the template, and pasting a crop back puts it where it came from."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdserver.engines.restore.align import CROP, align_face, feather_mask, paste_face
from sdserver.engines.restore.detect import FFHQ_TEMPLATE_512, landmarks_from_eyes
from tests.engines.restore.faces import face_on_canvas


def test_landmarks_from_eyes_is_the_template_moved_rotated_and_scaled() -> None:
    eyes = np.array([[40.0, 50.0], [80.0, 60.0]], dtype=np.float32)
    points = landmarks_from_eyes(eyes)
    np.testing.assert_allclose(points[:2], eyes, atol=1e-3)
    # Distances scale uniformly: a similarity keeps the template's proportions.
    template = np.linalg.norm(FFHQ_TEMPLATE_512[2] - FFHQ_TEMPLATE_512[0]) / np.linalg.norm(
        FFHQ_TEMPLATE_512[1] - FFHQ_TEMPLATE_512[0]
    )
    ours = np.linalg.norm(points[2] - points[0]) / np.linalg.norm(points[1] - points[0])
    assert ours == pytest.approx(template, rel=1e-4)


def test_crop_puts_the_landmarks_on_the_template() -> None:
    image, _ = face_on_canvas()
    rgb = np.asarray(image)
    landmarks = landmarks_from_eyes(np.array([[150.0, 90.0], [190.0, 92.0]], dtype=np.float32))
    aligned = align_face(rgb, landmarks)
    assert aligned.crop.shape == (CROP, CROP, 3)
    moved = landmarks @ aligned.affine[:, :2].T + aligned.affine[:, 2]
    np.testing.assert_allclose(moved, FFHQ_TEMPLATE_512, atol=0.05)


def test_feather_mask_is_one_inside_and_fades_to_the_edges() -> None:
    mask = feather_mask(100, 0.1)
    assert mask[50, 50] == 1.0 and mask[0, 50] < 0.1 and mask[50, 99] < 0.1
    assert np.all(np.diff(mask[50, :50]) >= 0)


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_pasting_the_unrestored_crop_back_reproduces_the_upscaled_image(scale: int) -> None:
    image, (x, y, w, h) = face_on_canvas()
    rgb = np.asarray(image)
    landmarks = landmarks_from_eyes(np.array([[x + 0.27 * w, y + 0.37 * h], [x + 0.75 * w, y + 0.38 * h]]))
    aligned = align_face(rgb, landmarks)
    size = (image.width * scale, image.height * scale)
    upscaled = np.asarray(image.resize(size, Image.Resampling.BICUBIC))
    canvas = upscaled.copy()
    mask = paste_face(canvas, aligned.crop, aligned, image.size)
    # The pasted region covers the face, and the crop (a resampled copy of it) lines up with what was there.
    face = (slice(y * scale, (y + h) * scale), slice(x * scale, (x + w) * scale))
    assert mask[face].min() > 0.99
    error = np.abs(canvas[face].astype(int) - upscaled[face].astype(int))
    assert error.mean() < 6, f"pasted face is misplaced: mean error {error.mean():.1f}"
    shifted = np.abs(canvas[face].astype(int) - np.roll(upscaled, 3 * scale, axis=1)[face].astype(int))
    assert shifted.mean() > 2 * error.mean()
    # Far from the face nothing moved.
    untouched = mask == 0
    assert untouched.any() and np.array_equal(canvas[untouched], upscaled[untouched])
