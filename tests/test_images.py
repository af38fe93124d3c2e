"""Image input: base64 and data URLs, format sniffing, byte and pixel limits, bomb safety, modes, crop, encode."""

from __future__ import annotations

import asyncio
import base64
import time
import tracemalloc
from typing import Any

import pytest
from PIL import Image

from sdserver.config import Settings
from sdserver.errors import (
    FetchError,
    ImageDecodeError,
    ImageError,
    ImageTooLargeError,
    ImageTooManyPixelsError,
    NotBase64Error,
    NotFoundError,
    StorageError,
    UnsupportedImageTypeError,
    ValidationError,
)
from sdserver.images import (
    DecodedImage,
    ImageFormat,
    ImageLimits,
    center_crop_square,
    decode_base64_payload,
    encode_image,
    inspect_image,
    load_image_input,
    sniff_format,
)
from sdserver.netguard import FetchPolicy
from tests.support.http_host import HttpHost, Reply
from tests.support.image_files import (
    encode,
    gif_bytes,
    html_as_png,
    jpeg_bytes,
    jpeg_with_exif_orientation,
    palette_png_with_transparency,
    png_bomb,
    png_bytes,
    striped,
    truncated_png,
    webp_bytes,
)

MIB = 1024 * 1024
LIMITS = ImageLimits(max_bytes=10 * MIB, max_pixels=6000 * 6000)
LOCAL = FetchPolicy(allowlist=("127.0.0.1",), timeout_s=5.0, max_redirects=2, max_bytes=1)
CLOSED = FetchPolicy(allowlist=(), timeout_s=5.0, max_redirects=2, max_bytes=1)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def load(value: Any, **kwargs: Any) -> DecodedImage:
    options: dict[str, Any] = {"field": "init_image", "limits": LIMITS, "policy": CLOSED, **kwargs}
    return asyncio.run(load_image_input(value, **options))


# -- base64 and data URLs -------------------------------------------------------------------------

PAYLOAD = png_bytes(5, 7)
ENCODED = b64(PAYLOAD)


@pytest.mark.parametrize(
    "text",
    [
        ENCODED,
        f"data:image/png;base64,{ENCODED}",
        f"data:image/png;base64, {ENCODED}",
        f"DATA:image/jpeg;charset=utf-8;BASE64,{ENCODED}",
        f"  {ENCODED}\n",
        "\n".join(ENCODED[i : i + 76] for i in range(0, len(ENCODED), 76)),
        base64.urlsafe_b64encode(PAYLOAD).decode(),
        ENCODED.rstrip("="),
    ],
    ids=[
        "raw",
        "data-url",
        "space-after-comma",
        "odd-case-and-params",
        "surrounding-whitespace",
        "wrapped-lines",
        "url-safe-alphabet",
        "missing-padding",
    ],
)
def test_base64_spellings_clients_send_all_decode(text: str) -> None:
    assert decode_base64_payload(text, field="image") == PAYLOAD


@pytest.mark.parametrize(
    "text",
    ["", "   ", "not base64 at all!!", "abcde", "data:image/png,rawbytes", "data:image/png;base64,", "ab=cd"],
    ids=["empty", "blank", "punctuation", "impossible-length", "data-url-not-base64", "data-url-empty", "mid-pad"],
)
def test_text_that_is_not_base64_is_refused(text: str) -> None:
    with pytest.raises(NotBase64Error) as caught:
        decode_base64_payload(text, field="image")
    assert caught.value.field == "image"
    assert caught.value.message.startswith("image: ")


def test_the_decoded_size_is_checked_before_decoding() -> None:
    text = "A" * (4 * MIB)  # decodes to exactly 3 MiB of zeros
    assert len(decode_base64_payload(text, field="image", max_bytes=3 * MIB)) == 3 * MIB
    with pytest.raises(ImageTooLargeError) as caught:
        decode_base64_payload(text + "AAAA", field="image", max_bytes=3 * MIB)
    assert str(3 * MIB) in caught.value.message


# -- sniffing and inspection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fmt", "content_type", "ext"),
    [
        (png_bytes(64, 48), "png", "image/png", "png"),
        (jpeg_bytes(64, 48), "jpeg", "image/jpeg", "jpg"),
        (webp_bytes(64, 48), "webp", "image/webp", "webp"),
    ],
    ids=["png", "jpeg", "webp"],
)
def test_each_accepted_format_is_inspected(data: bytes, fmt: str, content_type: str, ext: str) -> None:
    assert sniff_format(data) == fmt
    image = inspect_image(data, LIMITS, field="image")
    assert (image.format, image.width, image.height) == (fmt, 64, 48)
    assert (image.content_type, image.ext) == (content_type, ext)
    assert image.data is data


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        (html_as_png(), "looks like HTML/XML text"),
        (gif_bytes(), "looks like a GIF"),
        (b"just some plain words, nothing more", "looks like text"),
        (bytes(range(256)), "unknown binary data"),
        (encode(Image.new("RGB", (4, 4)), "BMP"), "looks like a BMP"),
        (encode(Image.new("RGB", (4, 4)), "TIFF"), "looks like a TIFF"),
    ],
    ids=["html", "gif", "text", "binary", "bmp", "tiff"],
)
def test_other_kinds_of_data_are_refused_with_a_hint(data: bytes, hint: str) -> None:
    assert sniff_format(data) is None
    with pytest.raises(UnsupportedImageTypeError) as caught:
        inspect_image(data, LIMITS, field="image")
    assert caught.value.message == f"image: the bytes are not a PNG, JPEG or WebP image ({hint})"


@pytest.mark.parametrize(
    "data",
    [
        truncated_png(),
        png_bytes()[:30],
        jpeg_bytes()[:200],
        b"\x89PNG\r\n\x1a\n" + b"\0" * 100,
        b"RIFF\0\0\0\0WEBPjunkjunk",
    ],
    ids=["png-cut-in-pixel-data", "png-cut-in-header", "jpeg-cut", "png-signature-only", "webp-signature-only"],
)
def test_corrupt_or_truncated_data_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(ImageDecodeError) as caught:
        inspect_image(data, LIMITS, field="image")
    assert caught.value.field == "image"


def test_the_byte_cap_comes_first_and_names_both_numbers() -> None:
    header = png_bytes(8, 8)
    over = header + b"\0" * (10 * MIB + 1 - len(header))
    with pytest.raises(ImageTooLargeError) as caught:
        inspect_image(over, LIMITS, field="image")
    assert caught.value.message == "image: the image is 10485761 bytes, over the limit of 10485760 bytes"
    # One byte less is not refused (Pillow ignores the padding after IEND, so it is a fine 8x8 PNG).
    assert inspect_image(over[:-1], LIMITS, field="image").width == 8


def test_too_many_pixels_is_refused_from_the_header() -> None:
    with pytest.raises(ImageTooManyPixelsError) as caught:
        inspect_image(png_bytes(100, 50), ImageLimits(max_bytes=MIB, max_pixels=4999), field="image")
    assert caught.value.message == "image: the image is 100x50 = 5000 pixels, over the limit of 4999 pixels"
    assert inspect_image(png_bytes(100, 50), ImageLimits(max_bytes=MIB, max_pixels=5000), field="image").width == 100


def test_a_decompression_bomb_is_refused_fast_without_allocating() -> None:
    bomb = png_bomb(30000)
    assert len(bomb) < 200_000
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ImageTooManyPixelsError) as caught:
            inspect_image(bomb, LIMITS, field="image")
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "30000x30000" in caught.value.message
    assert elapsed < 0.5
    assert peak < 50 * MIB


def test_the_bomb_check_does_not_depend_on_pillows_global_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ImageTooManyPixelsError):
        inspect_image(png_bomb(30000), LIMITS, field="image")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert inspect_image(png_bytes(64, 48), LIMITS, field="image").width == 64


def test_limits_from_settings() -> None:
    settings = Settings(max_image_bytes=2048, max_image_pixels=5000)
    assert ImageLimits.from_settings(settings) == ImageLimits(max_bytes=2048, max_pixels=5000)


# -- pixels out -----------------------------------------------------------------------------------


def test_to_pil_applies_exif_orientation() -> None:
    image = inspect_image(jpeg_with_exif_orientation(40, 20, orientation=6), LIMITS, field="image")
    assert (image.width, image.height) == (40, 20)  # the stored size
    assert image.to_pil().size == (20, 40)  # the size people see


def _i16_png() -> bytes:
    return png_bytes(4, 4, color=(81, 81, 81), mode="I;16")


@pytest.mark.parametrize(
    ("data", "mode", "pixel"),
    [
        (png_bytes(4, 4, color=(9, 8, 7)), "RGB", (9, 8, 7)),
        (palette_png_with_transparency(), "RGBA", (0, 0, 0, 0)),
        (png_bytes(4, 4, color=(90, 90, 90), mode="L"), "RGB", (90, 90, 90)),
        (png_bytes(4, 4, color=(90, 90, 90), mode="LA"), "RGB", (90, 90, 90)),
        (_i16_png(), "RGB", (81, 81, 81)),
        (png_bytes(4, 4, color=(1, 2, 3, 128), mode="RGBA"), "RGBA", (1, 2, 3, 128)),
        (png_bytes(4, 4, color=(1, 2, 3, 255), mode="RGBA"), "RGB", (1, 2, 3)),
        (webp_bytes(4, 4, color=(1, 2, 3, 0), mode="RGBA"), "RGBA", (0, 0, 0, 0)),
        (jpeg_bytes(4, 4, color=(255, 255, 255), mode="CMYK"), "RGB", (255, 255, 255)),
        (png_bytes(4, 4, color=(255, 255, 255), mode="1"), "RGB", (255, 255, 255)),
    ],
    ids=[
        "rgb",
        "palette-transparency",
        "grey",
        "grey-opaque-alpha",
        "16-bit-grey",
        "rgba-translucent",
        "rgba-opaque",
        "webp-alpha",
        "cmyk-jpeg",
        "bilevel",
    ],
)
def test_to_pil_normalises_the_mode(data: bytes, mode: str, pixel: tuple[int, ...]) -> None:
    image = inspect_image(data, LIMITS, field="image").to_pil()
    assert image.mode == mode
    assert image.getpixel((0, 0)) == pixel


def test_palette_transparency_keeps_the_opaque_part() -> None:
    image = inspect_image(palette_png_with_transparency(8, 8), LIMITS, field="image").to_pil()
    assert image.getpixel((7, 0)) == (255, 0, 0, 255)


# -- crop and encode ------------------------------------------------------------------------------

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def test_center_crop_takes_the_middle_square_and_resizes_it() -> None:
    # 300x200 in three 100-px stripes: the centred 200x200 square is 50 px red, 100 green, 50 blue.
    square = center_crop_square(striped(300, 200, [RED, GREEN, BLUE]), 512)
    assert square.size == (512, 512)
    assert square.getpixel((20, 256)) == RED
    assert square.getpixel((256, 256)) == GREEN
    assert square.getpixel((491, 256)) == BLUE


def test_center_crop_of_a_tall_image_takes_the_middle_band() -> None:
    tall = striped(300, 200, [RED, GREEN, BLUE]).transpose(Image.Transpose.ROTATE_270)  # red on top
    assert tall.size == (200, 300)
    square = center_crop_square(tall, 64)
    assert square.size == (64, 64)
    assert [square.getpixel((32, y)) for y in (2, 32, 61)] == [RED, GREEN, BLUE]


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"], ids=["png", "jpeg", "webp"])
def test_encode_round_trips_through_inspection(fmt: ImageFormat) -> None:
    data = encode_image(Image.new("RGBA", (10, 6), (0, 0, 255, 0)), fmt)
    image = inspect_image(data, LIMITS, field="image")
    assert (image.format, image.width, image.height) == (fmt, 10, 6)
    if fmt == "jpeg":
        # JPEG has no alpha: transparent pixels land on white, not black.
        pixel = image.to_pil().getpixel((5, 3))
        assert isinstance(pixel, tuple)
        assert all(channel > 240 for channel in pixel)


# -- load_image_input -----------------------------------------------------------------------------


def test_load_from_base64_and_data_url() -> None:
    data = jpeg_bytes(30, 20)
    assert load(b64(data)).data == data
    assert load(f"  data:image/jpeg;base64, {b64(data)}  ").format == "jpeg"


@pytest.mark.parametrize(
    ("value", "error", "fragment"),
    [
        ("", ValidationError, "init_image: is required, got ''"),
        ("   ", ValidationError, "is required"),
        (None, ValidationError, "is required, got nothing"),
        (123, ValidationError, "is required, got 123"),
        ("not base64 at all!!", NotBase64Error, "not valid base64"),
        ("data:image/png;base64," + b64(html_as_png()), UnsupportedImageTypeError, "HTML"),
        (b64(gif_bytes()), UnsupportedImageTypeError, "GIF"),
        (b64(truncated_png()), ImageDecodeError, "truncated"),
        (b64(png_bomb(30000)), ImageTooManyPixelsError, "30000x30000"),
        (b64(b"\0" * (10 * MIB + 1)), ImageTooLargeError, "10485760"),
        ("http://10.0.0.1/a.png", FetchError, "Unable to fetch image"),
        ("file:///etc/passwd", FetchError, "Unable to fetch image"),
    ],
    ids=[
        "empty",
        "blank",
        "none",
        "number",
        "not-base64",
        "html-as-png",
        "gif",
        "truncated",
        "bomb",
        "over-10-mib",
        "private-url",
        "file-url",
    ],
)
def test_load_refuses_bad_values_naming_the_field(value: Any, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error) as caught:
        load(value)
    assert fragment in str(caught.value)
    assert isinstance(caught.value, ImageError | ValidationError)
    assert "init_image" in caught.value.field_errors


def test_load_through_an_allow_listed_url() -> None:
    data = webp_bytes(12, 9)
    with HttpHost({"/img": Reply(data, "text/plain")}) as host:  # the declared type is never trusted
        image = load(f" {host.url('/img')} ", policy=LOCAL)
    assert (image.format, image.width, image.data) == ("webp", 12, data)


def test_load_through_a_url_uses_the_image_byte_limit_and_refuses_non_images() -> None:
    small = ImageLimits(max_bytes=100, max_pixels=LIMITS.max_pixels)
    with HttpHost({"/big": Reply(png_bytes()), "/page": Reply(html_as_png(), "image/png")}) as host:
        with pytest.raises(FetchError) as too_big:
            load(host.url("/big"), policy=LOCAL, limits=small)
        with pytest.raises(UnsupportedImageTypeError):
            load(host.url("/page"), policy=LOCAL)
    assert too_big.value.field_errors["init_image"][0].startswith("response exceeds 100 bytes")


class FakeStore:
    """Recognises http://files.example/<key> and serves from memory; `failure` makes `get` raise it."""

    def __init__(self, objects: dict[str, bytes], failure: Exception | None = None) -> None:
        self.objects = objects
        self.failure = failure
        self.reads: list[str] = []

    def key_from_url(self, url: str) -> str | None:
        prefix = "http://files.example/"
        return url.removeprefix(prefix) if url.startswith(prefix) else None

    def get(self, key: str) -> bytes:
        self.reads.append(key)
        if self.failure is not None:
            raise self.failure
        return self.objects[key]


def test_an_issued_url_is_read_from_the_store_without_http() -> None:
    data = png_bytes(3, 2)
    store = FakeStore({"u/abc.png": data})
    # files.example does not resolve and the closed policy refuses everything: only the store can answer.
    image = load("http://files.example/u/abc.png", issued=store)
    assert (image.data, store.reads) == (data, ["u/abc.png"])


def test_urls_the_store_does_not_recognise_still_go_through_the_guard() -> None:
    store = FakeStore({})
    with pytest.raises(FetchError) as caught:
        load("http://127.0.0.1/u/abc.png", issued=store)
    assert "loopback" in caught.value.field_errors["init_image"][0]
    assert store.reads == []


@pytest.mark.parametrize(
    "failure",
    [None, FileNotFoundError("gone"), NotFoundError()],
    ids=["key-error", "file-not-found", "not-found-error"],
)
def test_a_missing_issued_object_is_a_fetch_error(failure: Exception | None) -> None:
    with pytest.raises(FetchError) as caught:
        load("http://files.example/u/gone.png", issued=FakeStore({}, failure))
    assert caught.value.field_errors == {"init_image": ["the linked object no longer exists"]}


def test_store_outages_propagate_as_they_are() -> None:
    with pytest.raises(StorageError):
        load("http://files.example/u/a.png", issued=FakeStore({}, StorageError()))


def test_issued_objects_are_still_inspected() -> None:
    with pytest.raises(UnsupportedImageTypeError):
        load("http://files.example/page", issued=FakeStore({"page": html_as_png()}))


# The fuzzer's find: a JPEG whose EXIF block claims a big-endian TIFF header with a bad magic number.
BROKEN_EXIF_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgAqAQEAAAEAAQAA/+EAIkV4aWYAAE1NzCoAAAAIAAEBEgADAAAAAQAGAAAAAAAA/9sAQwAIBgYHBgUIBwcHCQkI"
    "CgwUDQwLCwwZEhMPFB0aHx4dGhwcICQuJyAiLCMcHAEAoAAAAAAAKDMpLDAxNDQ0Hyc5PTgyPC4zNDL/2wBDAQkJCQwLDBgNDRgy"
    "IRwhMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMDAwMDAwMDAwMDAwMDAwMDA4Nzg1NDc0MTf/wAARCAAUACgDASIAAhEBAxEB/8QA"
    "HwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEI"
    "I0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKT"
    "lHN0dXZ3eHl6goOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq8vP0"
    "9fb3+Pn6/9oADAMBAAIRAxEAPwCGiiivhz84CiiigAooooAKKKKACiiigAooooA//9k="
)


def test_a_broken_exif_block_is_ignored_and_the_picture_still_decodes() -> None:
    """PIL's EXIF parser raised SyntaxError from `to_pil` (an HTTP 500, or a failed job in the engines)."""
    decoded = inspect_image(BROKEN_EXIF_JPEG, LIMITS, field="image")
    picture = decoded.to_pil()
    assert picture.size == (decoded.width, decoded.height) and picture.mode == "RGB"
