"""Reads a job's input image from the object store for any engine: one decoder, one set of failure codes."""

from __future__ import annotations

import io
from typing import Final

from PIL import Image, UnidentifiedImageError

from sdserver.engines.base import JobFailed
from sdserver.errors import JobErrorCode, NotFoundError
from sdserver.images import upright
from sdserver.objects.base import ObjectStore

# What the API accepts; other decoders stay unreachable even if a stored object were something else.
INPUT_FORMATS: Final = ("PNG", "JPEG", "WEBP")
# What Pillow raises on corrupt or hostile bytes (truncated data, bad headers, decompression bombs).
DECODE_ERRORS: Final = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def read_input_image(
    objects: ObjectStore, key: object, field: str, *, mode: str | None = None, max_pixels: int | None = None
) -> Image.Image:
    """The stored image under `key`, decoded, upright (EXIF orientation applied, as the API previewed it) and
    converted to `mode` when one is given.

    Raises JobFailed naming `field`: INVALID_IMAGE when the job has no key or the bytes do not decode,
    IMAGE_NOT_FOUND when the object is gone, INPUT_TOO_LARGE past `max_pixels`.
    """
    if not isinstance(key, str) or not key:
        raise JobFailed(JobErrorCode.INVALID_IMAGE, f"{field}: the job has no stored image")
    try:
        data = objects.get(key)
    except NotFoundError:
        raise JobFailed(JobErrorCode.IMAGE_NOT_FOUND, f"{field}: the stored image is gone ({key})") from None
    try:
        image = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise JobFailed(
                JobErrorCode.INPUT_TOO_LARGE,
                f"{field}: the image is {width}x{height} pixels, over the limit of {max_pixels} pixels",
            )
        image.load()
        turned = upright(image)
        return turned if mode is None else turned.convert(mode)
    except DECODE_ERRORS as exc:
        message = f"{field}: the stored image could not be decoded: {exc}"
        raise JobFailed(JobErrorCode.INVALID_IMAGE, message) from None
