"""The Haar detector finds a real face at its box, gives landmarks on it, and finds none where there is none."""

from __future__ import annotations

import numpy as np
import skimage.data

from sdserver.engines.restore.detect import HaarFaceDetector
from tests.engines.restore.faces import ASTRONAUT_FACE, face_on_canvas, no_face_image


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    width = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    height = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = width * height
    return inter / (aw * ah + bw * bh - inter)


def test_finds_the_astronaut() -> None:
    [face] = HaarFaceDetector().detect(skimage.data.astronaut())
    assert _overlap(face.box, ASTRONAUT_FACE) > 0.9


def test_finds_a_face_where_it_was_put_with_landmarks_inside_it() -> None:
    detector = HaarFaceDetector()
    for left, top in [(20, 10), (130, 60)]:
        image, box = face_on_canvas(left, top)
        [face] = detector.detect(np.asarray(image))
        assert _overlap(face.box, box) > 0.8, (face.box, box)
        x, y, w, h = box
        eyes, mouth = face.landmarks[:2], face.landmarks[3:]
        assert np.all((eyes[:, 0] > x) & (eyes[:, 0] < x + w) & (eyes[:, 1] > y) & (eyes[:, 1] < y + h / 2))
        assert eyes[0, 0] < eyes[1, 0] and np.all(mouth[:, 1] > eyes[:, 1].max())


def test_no_faces_in_a_photo_without_one_or_in_flat_and_noisy_images() -> None:
    detector = HaarFaceDetector()
    noise = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    for image in (np.asarray(no_face_image()), np.full((64, 64, 3), 128, np.uint8), noise):
        assert detector.detect(image) == []


def test_finds_every_face_up_to_max_faces() -> None:
    image, _ = face_on_canvas(10, 10)
    small, _ = face_on_canvas(130, 60)
    both = np.concatenate([np.asarray(image), np.asarray(small)], axis=1)
    faces = HaarFaceDetector().detect(both)
    assert len(faces) == 2
    assert len(HaarFaceDetector(max_faces=1).detect(both)) == 1
