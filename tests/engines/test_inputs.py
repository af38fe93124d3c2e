"""The one input-image reader of every engine: decoding, orientation, and the same failure codes everywhere."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from sdserver.engines.base import JobFailed
from sdserver.engines.inputs import read_input_image
from sdserver.errors import JobErrorCode
from sdserver.objects.base import make_object_key
from sdserver.objects.local import LocalObjectStore


@pytest.fixture
def objects(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path, "http://sd.test", b"secret", 3600)


def stored(objects: LocalObjectStore, data: bytes) -> str:
    key = make_object_key("uploads", "png", temp=False)
    objects.put(key, data, "image/png")
    return key


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def failure(objects: LocalObjectStore, key: object, **options: int) -> JobFailed:
    with pytest.raises(JobFailed) as failed:
        read_input_image(objects, key, "init_image", **options)
    return failed.value


def test_a_stored_image_is_decoded_and_converted(objects: LocalObjectStore) -> None:
    key = stored(objects, encoded(Image.new("RGBA", (6, 4), (10, 20, 30, 255))))
    assert read_input_image(objects, key, "init_image").mode == "RGBA"
    image = read_input_image(objects, key, "init_image", mode="L")
    assert (image.mode, image.size) == ("L", (6, 4))


def test_exif_orientation_is_applied(objects: LocalObjectStore) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90° clockwise
    key = stored(objects, encoded(Image.new("RGB", (6, 4)), "JPEG", exif=exif.tobytes()))
    assert read_input_image(objects, key, "init_image").size == (4, 6)


@pytest.mark.parametrize("key", [None, "", 7], ids=["none", "empty", "not-a-string"])
def test_a_job_without_a_key_is_an_invalid_image(objects: LocalObjectStore, key: object) -> None:
    failed = failure(objects, key)
    assert (failed.code, failed.message) == (JobErrorCode.INVALID_IMAGE, "init_image: the job has no stored image")


def test_a_vanished_object_is_image_not_found(objects: LocalObjectStore) -> None:
    key = make_object_key("uploads", "png", temp=False)
    failed = failure(objects, key)
    assert failed.code is JobErrorCode.IMAGE_NOT_FOUND and key in failed.message


@pytest.mark.parametrize(
    "data",
    [b"\x89PNG\r\n\x1a\nthen garbage", encoded(Image.new("RGB", (4, 4)), "GIF")],
    ids=["corrupt-png", "gif-is-not-accepted"],
)
def test_undecodable_bytes_are_an_invalid_image(objects: LocalObjectStore, data: bytes) -> None:
    failed = failure(objects, stored(objects, data))
    assert failed.code is JobErrorCode.INVALID_IMAGE
    assert failed.message.startswith("init_image: the stored image could not be decoded")


def test_the_pixel_cap_is_checked_before_decoding(objects: LocalObjectStore) -> None:
    key = stored(objects, encoded(Image.new("RGB", (20, 20))))
    failed = failure(objects, key, max_pixels=300)
    assert failed.code is JobErrorCode.INPUT_TOO_LARGE and "20x20" in failed.message
    assert read_input_image(objects, key, "init_image", max_pixels=400).size == (20, 20)
