"""Image input for every endpoint: base64, data URL or URL in; byte and pixel limits; bomb-safe decode."""

from __future__ import annotations

import base64
import binascii
import functools
import io
import re
from dataclasses import dataclass, replace
from typing import Literal, Protocol, TypeAlias

import anyio.to_thread
from PIL import Image, ImageChops, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from sdserver.config import Settings
from sdserver.errors import (
    FetchError,
    ImageDecodeError,
    ImageTooLargeError,
    ImageTooManyPixelsError,
    NotBase64Error,
    NotFoundError,
    UnsupportedImageTypeError,
    ValidationError,
)
from sdserver.netguard import FetchPolicy, fetch_url

ImageFormat: TypeAlias = Literal["png", "jpeg", "webp"]
# File extensions of stored images (the object store's key suffixes).
ImageExtension: TypeAlias = Literal["png", "jpg", "webp"]

_CONTENT_TYPES: dict[ImageFormat, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_EXTENSIONS: dict[ImageFormat, ImageExtension] = {"png": "png", "jpeg": "jpg", "webp": "webp"}
# Opening through the plugin class (not Image.open) reads only the header and skips Pillow's global
# MAX_IMAGE_PIXELS check, so our own per-call pixel limit is the one that applies, thread-safely.
_OPENERS: dict[ImageFormat, type[ImageFile.ImageFile]] = {
    "png": PngImagePlugin.PngImageFile,
    "jpeg": JpegImagePlugin.JpegImageFile,
    "webp": WebPImagePlugin.WebPImageFile,
}

_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]*/?[\w.+-]*)(?P<params>(;[^,;]*)*?);base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
_URL_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*://", re.IGNORECASE)
# Cheap guesses for the "what was it instead" hint of UnsupportedImageTypeError.
_LOOKALIKES: tuple[tuple[bytes, str], ...] = (
    (b"GIF8", "a GIF"),
    (b"BM", "a BMP"),
    (b"II*\0", "a TIFF"),
    (b"MM\0*", "a TIFF"),
    (b"%PDF", "a PDF"),
    (b"\0\0\1\0", "an ICO"),
    (b"PK\3\4", "a ZIP archive"),
    (b"<", "HTML/XML text"),
    (b"{", "JSON text"),
)


@dataclass(frozen=True)
class ImageLimits:
    """What an image input may cost: encoded bytes and decoded pixels."""

    max_bytes: int
    max_pixels: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        return cls(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)


@dataclass(frozen=True)
class DecodedImage:
    """An image input that passed every check. `data` is the original bytes, untouched."""

    data: bytes
    format: ImageFormat
    width: int
    height: int

    @property
    def content_type(self) -> str:
        return _CONTENT_TYPES[self.format]

    @property
    def ext(self) -> ImageExtension:
        return _EXTENSIONS[self.format]

    def to_pil(self) -> Image.Image:
        """The decoded pixels, upright (EXIF orientation applied), as RGB, or RGBA if any transparency."""
        image = _open_header(self.data, self.format)
        image.load()
        return normalize_mode(upright(image))


class IssuedObjectReader(Protocol):
    """The object store, seen from image input: recognise our own URLs and read them without HTTP.

    `get` raises KeyError, FileNotFoundError or NotFoundError when the object no longer exists.
    """

    def key_from_url(self, url: str) -> str | None: ...

    def get(self, key: str) -> bytes: ...


def decode_base64_payload(text: str, *, field: str, max_bytes: int | None = None) -> bytes:
    """Raw base64 or a `data:...;base64,` URL to bytes; tolerates whitespace, URL-safe alphabet, no padding."""
    payload = text.strip()
    if payload[:5].lower() == "data:":
        match = _DATA_URL.match(payload)
        if match is None:
            raise NotBase64Error("a data URL must look like data:image/png;base64,<data>", field=field)
        payload = payload[match.end() :]
    # Clients wrap lines and use the URL-safe alphabet; padding is often dropped.
    payload = _WHITESPACE.sub("", payload).replace("-", "+").replace("_", "/").rstrip("=")
    if not payload or len(payload) % 4 == 1:
        raise NotBase64Error(field=field)
    estimated = len(payload) * 3 // 4
    if max_bytes is not None and estimated > max_bytes:
        raise ImageTooLargeError(
            f"the image is about {estimated} bytes, over the limit of {max_bytes} bytes", field=field
        )
    try:
        return base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError):
        # ValueError: a non-ASCII character (b64decode refuses str with any), found by the atheris target.
        raise NotBase64Error(field=field) from None


def sniff_format(data: bytes) -> ImageFormat | None:
    """The image format the leading magic bytes announce, if it is one we accept."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _describe(data: bytes) -> str:
    head = data[:64].lstrip()
    for magic, name in _LOOKALIKES:
        if head.startswith(magic):
            return f"looks like {name}"
    if head[4:8] == b"ftyp":
        return "looks like an AVIF/HEIC/MP4 file"
    if not data:
        return "the data is empty"
    sample = data[:256].decode("utf-8", errors="replace")
    printable = sum(ch.isprintable() or ch.isspace() for ch in sample)
    return "looks like text" if printable >= 0.95 * len(sample) else "unknown binary data"


def _open_header(data: bytes, fmt: ImageFormat) -> ImageFile.ImageFile:
    """Parse only the header with the plugin for `fmt` (the container must really be that format)."""
    return _OPENERS[fmt](io.BytesIO(data))


def inspect_image(data: bytes, limits: ImageLimits, *, field: str) -> DecodedImage:
    """Prove `data` is a PNG, JPEG or WebP within the limits; cheap checks first, the full decode last."""
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(
            f"the image is {len(data)} bytes, over the limit of {limits.max_bytes} bytes", field=field
        )
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedImageTypeError(f"the bytes are not a PNG, JPEG or WebP image ({_describe(data)})", field=field)
    # Pillow raises a zoo of types on hostile input (OSError, SyntaxError, struct.error, IndexError,
    # ...); every one of them means "not a usable image". The plugin class refuses any other container.
    try:
        image = _open_header(data, fmt)
    except Image.DecompressionBombError:
        raise ImageTooManyPixelsError(field=field) from None
    except Exception as exc:
        raise ImageDecodeError(f"the {fmt.upper()} header could not be read ({exc})", field=field) from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageTooManyPixelsError(
            f"the image is {width}x{height} = {width * height} pixels, over the limit of {limits.max_pixels} pixels",
            field=field,
        )
    try:
        image.load()
    except Image.DecompressionBombError:
        raise ImageTooManyPixelsError(field=field) from None
    except Exception as exc:
        reason = f"the {fmt.upper()} data is corrupt or truncated ({exc})"
        raise ImageDecodeError(reason, field=field) from None
    return DecodedImage(data=data, format=fmt, width=width, height=height)


async def load_image_input(
    value: str,
    *,
    field: str,
    limits: ImageLimits,
    policy: FetchPolicy,
    issued: IssuedObjectReader | None = None,
) -> DecodedImage:
    """Turn an image field (URL, URL we issued, raw base64 or data URL) into a checked `DecodedImage`."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError.for_field(field, "is required", value)
    text = value.strip()
    if _URL_SCHEME.match(text):
        data = await _read_url(text, field=field, limits=limits, policy=policy, issued=issued)
    else:
        data = decode_base64_payload(text, field=field, max_bytes=limits.max_bytes)
    return await anyio.to_thread.run_sync(functools.partial(inspect_image, data, limits, field=field))


async def _read_url(
    url: str, *, field: str, limits: ImageLimits, policy: FetchPolicy, issued: IssuedObjectReader | None
) -> bytes:
    if issued is not None and (key := issued.key_from_url(url)) is not None:
        try:
            return await anyio.to_thread.run_sync(issued.get, key)
        except (KeyError, FileNotFoundError, NotFoundError):
            raise FetchError("the linked object no longer exists", field=field) from None
    # Non-http schemes go to the guard too, so the client hears which rule the URL broke.
    response = await fetch_url(url, replace(policy, max_bytes=limits.max_bytes), field=field)
    return response.content


def normalize_mode(image: Image.Image) -> Image.Image:
    """RGB, or RGBA when the image has any transparent pixel (alpha, palette or colour-key transparency)."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale: keep the top 8 bits instead of clipping everything above 255 to white.
        image = image.convert("I").point(lambda v: v / 256).convert("L")
    elif mode == "F":
        image = image.point(lambda v: v * 255).convert("L")
    if "transparency" in image.info or image.mode in ("P", "PA", "LA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        # A fully opaque alpha channel carries nothing; dropping it keeps pipelines on plain RGB.
        opaque = ImageChops.invert(image.getchannel("A")).getbbox() is None
        return image.convert("RGB") if opaque else image
    return image if image.mode == "RGB" else image.convert("RGB")


def center_crop_square(image: Image.Image, size: int = 512) -> Image.Image:
    """The centred largest square of `image`, resized to size×size with LANCZOS."""
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return square.resize((size, size), Image.Resampling.LANCZOS)


def encode_image(image: Image.Image, fmt: ImageFormat = "png") -> bytes:
    """Encode to PNG, JPEG (alpha flattened onto white, quality 95) or WebP (quality 95)."""
    image = normalize_mode(image)
    buffer = io.BytesIO()
    if fmt == "jpeg":
        if image.mode == "RGBA":
            background = Image.new("RGB", image.size, (255, 255, 255))
            background.paste(image, mask=image.getchannel("A"))
            image = background
        image.save(buffer, "JPEG", quality=95)
    elif fmt == "webp":
        image.save(buffer, "WEBP", quality=95)
    else:
        image.save(buffer, "PNG")
    return buffer.getvalue()


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says; a broken EXIF block is ignored, since the pixels are fine."""
    try:
        return ImageOps.exif_transpose(image)
    # PIL parses EXIF as a TIFF directory and raises whatever that parser meets on hostile bytes (SyntaxError,
    # struct.error, ValueError, ...): none of it may turn a decodable picture into a failed request.
    except Exception:
        return image
