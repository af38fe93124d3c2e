"""Face alignment: warp a face onto the restorers' 512×512 template by a similarity transform, and paste the
restored crop back into the (upscaled) image through the inverse transform under a feathered mask."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

from sdserver.engines.restore.detect import FFHQ_TEMPLATE_512, Points

CROP: Final = 512
# Grey the crop is padded with where the face runs off the image (what the restorers saw in training).
PAD_VALUE: Final = (135, 133, 132)
# Width of the mask's soft edge, as a fraction of the crop side.
FEATHER: Final = 0.08

Affine = npt.NDArray[np.float64]
Pixels = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class AlignedFace:
    """A 512×512 RGB crop and the 2×3 affine that took input pixel coordinates into it."""

    crop: Pixels
    affine: Affine


def align_face(rgb: Pixels, landmarks: Points) -> AlignedFace:
    """Crop the face whose five landmarks are given onto the template (least-median similarity fit)."""
    affine, _ = cv2.estimateAffinePartial2D(landmarks, FFHQ_TEMPLATE_512, method=cv2.LMEDS)
    if affine is None:
        raise ValueError("the landmarks do not determine a similarity transform")
    crop = cv2.warpAffine(
        rgb, affine, (CROP, CROP), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=PAD_VALUE
    )
    return AlignedFace(np.ascontiguousarray(crop), affine.astype(np.float64))


def feather_mask(side: int = CROP, feather: float = FEATHER) -> npt.NDArray[np.float32]:
    """1 in the middle of the crop, falling linearly to 0 over the outer `feather` of each side."""
    ramp = max(1.0, side * feather)
    distance = np.minimum(np.arange(side), np.arange(side)[::-1]).astype(np.float32) + 0.5
    edge = np.clip(distance / ramp, 0.0, 1.0)
    return np.asarray(np.minimum(edge[:, None], edge[None, :]), dtype=np.float32)


def output_to_crop(affine: Affine, scale_x: float, scale_y: float) -> Affine:
    """The affine from output pixels (an image `scale` times the input) to crop pixels: output pixel centres
    map back to input coordinates first, (j + 0.5) / scale - 0.5."""
    to_input = np.array(
        [[1 / scale_x, 0.0, 0.5 / scale_x - 0.5], [0.0, 1 / scale_y, 0.5 / scale_y - 0.5], [0.0, 0.0, 1.0]]
    )
    return np.asarray(affine @ to_input, dtype=np.float64)


def paste_face(
    canvas: Pixels, restored: Pixels, face: AlignedFace, input_size: tuple[int, int]
) -> npt.NDArray[np.float32]:
    """Blend `restored` (512×512 RGB) into `canvas` (the upscaled H×W×3 image) in place; returns the blend
    weights used (H×W, 0 where the canvas kept its pixels). Parts of the crop that lay outside the input image
    (its padding) are never pasted."""
    out_h, out_w = canvas.shape[:2]
    in_w, in_h = input_size
    to_crop = output_to_crop(face.affine, out_w / in_w, out_h / in_h)
    to_output = cv2.invertAffineTransform(to_crop)
    inside = cv2.warpAffine(
        np.ones((in_h, in_w), np.float32), face.affine, (CROP, CROP), flags=cv2.INTER_LINEAR, borderValue=0.0
    )
    mask_crop = feather_mask() * cv2.erode(inside, np.ones((5, 5), np.uint8))
    size = (out_w, out_h)
    mask = cv2.warpAffine(mask_crop, to_output, size, flags=cv2.INTER_LINEAR, borderValue=0.0)
    pixels = cv2.warpAffine(restored, to_output, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    weight = mask[..., None]
    blended = canvas.astype(np.float32) * (1.0 - weight) + pixels.astype(np.float32) * weight
    touched = mask > 0
    canvas[touched] = np.clip(np.rint(blended[touched]), 0, 255).astype(np.uint8)
    return np.asarray(mask, dtype=np.float32)
