"""Face detection with the Haar cascades that ship inside the OpenCV wheel: frontal face boxes, confirmed and
located by their eyes, turned into the five landmarks (eyes, nose, mouth corners) the alignment needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

FACE_CASCADE: Final = "haarcascade_frontalface_default.xml"
EYE_CASCADE: Final = "haarcascade_eye.xml"
# Smallest face looked for, in pixels: below it the eyes are a few pixels wide and cannot confirm the face.
MIN_FACE: Final = 32
# Most faces restored in one image: each costs one restorer pass (about a second on a GPU, many on a CPU).
MAX_FACES: Final = 16
SCALE_STEP: Final = 1.1
FACE_NEIGHBOURS: Final = 5
EYE_NEIGHBOURS: Final = 3
# Eyes are looked for in this top fraction of a face box.
EYE_BAND: Final = 0.6
# Where the eyes of a frontal face sit in a Haar face box (fractions of its width and height), used when the
# eye cascade finds only one of them.
EYE_ROW: Final = 0.37
EYE_COLUMNS: Final = (0.29, 0.71)

# The five points of a face in the 512×512 FFHQ crop GFPGAN and CodeFormer were trained on: left eye, right eye
# (as seen in the image), nose tip, left and right mouth corners.
FFHQ_TEMPLATE_512: Final = np.array(
    [[192.98, 239.95], [318.90, 240.19], [256.63, 314.02], [201.26, 371.41], [313.09, 371.15]], dtype=np.float32
)

Points = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Face:
    """One detected face: its box (x, y, width, height in input pixels) and 5×2 landmarks."""

    box: tuple[int, int, int, int]
    landmarks: Points


def _cascade(name: str) -> cv2.CascadeClassifier:
    # The wheel keeps its cascades in cv2/data/ (cv2.data.haarcascades, which the type stubs lack).
    path = Path(cv2.__file__).parent / "data" / name
    classifier = cv2.CascadeClassifier(str(path))
    if classifier.empty():
        raise RuntimeError(f"OpenCV's bundled cascade {path} could not be read")
    return classifier


class HaarFaceDetector:
    """Finds upright, roughly frontal faces. A candidate box counts as a face only when an eye is found in it,
    which drops most of the cascade's false positives on textures."""

    def __init__(self, min_face: int = MIN_FACE, max_faces: int = MAX_FACES) -> None:
        self._faces = _cascade(FACE_CASCADE)
        self._eyes = _cascade(EYE_CASCADE)
        self._min_face, self._max_faces = min_face, max_faces

    def detect(self, rgb: npt.NDArray[np.uint8]) -> list[Face]:
        """The faces in an H×W×3 RGB image, largest first."""
        grey = np.asarray(cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)), dtype=np.uint8)
        boxes = self._faces.detectMultiScale(
            grey, scaleFactor=SCALE_STEP, minNeighbors=FACE_NEIGHBOURS, minSize=(self._min_face, self._min_face)
        )
        found: list[Face] = []
        for x, y, w, h in sorted((tuple(int(v) for v in box) for box in boxes), key=lambda b: -b[2] * b[3]):
            eyes = self._find_eyes(grey, x, y, w, h)
            if eyes is None:
                continue
            found.append(Face((x, y, w, h), landmarks_from_eyes(eyes)))
            if len(found) == self._max_faces:
                break
        return found

    def _find_eyes(self, grey: npt.NDArray[np.uint8], x: int, y: int, w: int, h: int) -> Points | None:
        """The two eye centres (image-left first) in input pixels, or None when no eye is found."""
        band = grey[y : y + int(h * EYE_BAND), x : x + w]
        hits = self._eyes.detectMultiScale(band, scaleFactor=SCALE_STEP, minNeighbors=EYE_NEIGHBOURS)
        centres = [(ex + ew / 2, ey + eh / 2) for ex, ey, ew, eh in sorted(hits, key=lambda e: -e[2] * e[3])]
        left = [c for c in centres if c[0] < w / 2]
        right = [c for c in centres if c[0] >= w / 2]
        if not left and not right:
            return None
        # The largest hit on each side wins; a side with none takes the usual place in a Haar box.
        default_y = EYE_ROW * h
        left_eye = left[0] if left else (EYE_COLUMNS[0] * w, right[0][1] if right else default_y)
        right_eye = right[0] if right else (EYE_COLUMNS[1] * w, left_eye[1])
        return np.array([left_eye, right_eye], dtype=np.float32) + np.array([x, y], dtype=np.float32)


def landmarks_from_eyes(eyes: Points) -> Points:
    """The five template points carried by the similarity that puts the template's eyes on `eyes`."""
    template_eyes = FFHQ_TEMPLATE_512[:2]
    src = template_eyes[1] - template_eyes[0]
    dst = eyes[1] - eyes[0]
    # Similarity as a complex multiplication: rotation and scale from the eye-to-eye vector.
    ratio = complex(float(dst[0]), float(dst[1])) / complex(float(src[0]), float(src[1]))
    rotation = np.array([[ratio.real, -ratio.imag], [ratio.imag, ratio.real]], dtype=np.float32)
    points = (FFHQ_TEMPLATE_512 - template_eyes[0]) @ rotation.T + eyes[0]
    return np.asarray(points, dtype=np.float32)
