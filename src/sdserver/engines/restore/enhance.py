"""`FaceEnhancer`: the face_enhance step of super resolution — find the faces in the input, restore each aligned
crop, and paste it into the upscaled image (the background stays as the upscaler made it)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import torch
from PIL import Image

from sdserver.engines.lru import FingerprintLRU
from sdserver.engines.precision import PrecisionSetting
from sdserver.engines.restore.align import align_face, paste_face
from sdserver.engines.restore.detect import HaarFaceDetector
from sdserver.engines.restore.restorer import (
    DEFAULT_FIDELITY,
    FaceRestorer,
    RestorerName,
    load_restorer,
    weights_path,
)

# Modes whose colour is pasted into directly (alpha kept aside); greyscale goes through RGB and back.
COLOUR_MODES: Final = frozenset({"RGB", "RGBA"})
GREY_MODES: Final = frozenset({"L", "LA"})


@dataclass(frozen=True)
class EnhanceResult:
    image: Image.Image
    faces: int


class FaceEnhancer:
    """Holds one loaded restorer (reloaded when its weight file changes) and the face detector."""

    def __init__(
        self,
        folder: Path,
        name: RestorerName,
        *,
        device: torch.device | str | None = None,
        precision: PrecisionSetting = "auto",
        fidelity: float = DEFAULT_FIDELITY,
    ) -> None:
        self.folder, self.name = folder, name
        self._device, self._precision, self._fidelity = device, precision, fidelity
        self._loaded: FingerprintLRU[str, FaceRestorer] = FingerprintLRU(1)
        self._detector: HaarFaceDetector | None = None
        self._lock = threading.Lock()

    def restorer(self) -> FaceRestorer:
        """The loaded restorer; RestorerWeightsMissingError or UnsupportedWeightsError when it cannot be."""
        path = weights_path(self.folder, self.name)
        stat = path.stat()
        identity = (path, stat.st_mtime_ns, stat.st_size)
        cached = self._loaded.get(self.name, identity)
        if cached is not None:
            return cached
        restorer = load_restorer(
            path, self.name, device=self._device, precision=self._precision, fidelity=self._fidelity
        )
        self._loaded.put(self.name, identity, restorer)
        return restorer

    def detector(self) -> HaarFaceDetector:
        with self._lock:
            if self._detector is None:
                self._detector = HaarFaceDetector()
            return self._detector

    def clear(self) -> None:
        self._loaded.clear()

    def enhance(self, source: Image.Image, upscaled: Image.Image) -> EnhanceResult:
        """`upscaled` (the upscaler's output for `source`) with every face found in `source` restored in place.
        Without faces, or for 16-bit greyscale, it comes back untouched."""
        if upscaled.mode not in COLOUR_MODES | GREY_MODES:
            return EnhanceResult(upscaled, 0)
        rgb = np.asarray(source.convert("RGB"))
        faces = self.detector().detect(rgb)
        if not faces:
            return EnhanceResult(upscaled, 0)
        restorer = self.restorer()
        alpha = upscaled.getchannel("A") if upscaled.mode in ("RGBA", "LA") else None
        canvas = np.array(upscaled.convert("RGB"))
        aligned = [align_face(rgb, face.landmarks) for face in faces]
        for face, restored in zip(aligned, restorer.restore([a.crop for a in aligned]), strict=True):
            paste_face(canvas, restored, face, source.size)
        result = Image.fromarray(canvas, "RGB")
        if upscaled.mode in GREY_MODES:
            result = result.convert("L")
        if alpha is not None:
            result.putalpha(alpha)
        return EnhanceResult(result, len(faces))
