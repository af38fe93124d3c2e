"""Small image files for tests, good and hostile, built in memory."""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Sequence

from PIL import Image


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_bytes(w: int = 64, h: int = 48, color: tuple[int, ...] = (200, 30, 30), mode: str = "RGB") -> bytes:
    """A solid PNG. Non-RGB modes are converted from the RGB colour (I;16 via L, scaled to 16 bits)."""
    image = Image.new("RGB", (w, h), color[:3])
    if mode == "I;16":
        image = image.convert("L").point(lambda v: v * 257, "I").convert("I;16")
    elif mode == "RGBA" and len(color) == 4:
        image = Image.new("RGBA", (w, h), color)
    elif mode != "RGB":
        image = image.convert(mode)
    return encode(image, "PNG")


def jpeg_bytes(w: int = 64, h: int = 48, color: tuple[int, ...] = (200, 30, 30), mode: str = "RGB") -> bytes:
    return encode(Image.new("RGB", (w, h), color[:3]).convert(mode), "JPEG", quality=95)


def webp_bytes(w: int = 64, h: int = 48, color: tuple[int, ...] = (200, 30, 30), mode: str = "RGB") -> bytes:
    return encode(Image.new(mode, (w, h), color), "WEBP", lossless=True)


def gif_bytes(w: int = 16, h: int = 16) -> bytes:
    return encode(Image.new("RGB", (w, h), (0, 128, 255)), "GIF")


def jpeg_with_exif_orientation(w: int = 40, h: int = 20, orientation: int = 6) -> bytes:
    """A JPEG stored w×h whose EXIF says to rotate it (6: 90° clockwise, so it displays h×w)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.new("RGB", (w, h), (10, 200, 10)), "JPEG", exif=exif.tobytes())


def palette_png_with_transparency(w: int = 8, h: int = 8) -> bytes:
    """A palette PNG whose index 0 (the left half) is transparent via tRNS."""
    image = Image.new("P", (w, h), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    image.paste(0, (0, 0, w // 2, h))
    return encode(image, "PNG", transparency=0)


def striped(w: int, h: int, colors: Sequence[tuple[int, int, int]]) -> Image.Image:
    """Vertical stripes of equal width, left to right in `colors`."""
    image = Image.new("RGB", (w, h))
    stripe = w / len(colors)
    for index, color in enumerate(colors):
        image.paste(color, (round(index * stripe), 0, round((index + 1) * stripe), h))
    return image


def noisy_png(w: int = 128, h: int = 128) -> bytes:
    """A PNG that does not compress well, so its IDAT is big enough to cut in half."""
    return encode(Image.effect_noise((w, h), 64).convert("RGB"), "PNG")


def truncated_png() -> bytes:
    """A PNG cut in the middle of its pixel data: the header reads fine, the decode fails."""
    data = noisy_png()
    return data[: len(data) // 2]


def html_as_png() -> bytes:
    """An HTML page, as a client might send under an image/png label."""
    return b"<!DOCTYPE html>\n<html><head><title>Not an image</title></head><body>hi</body></html>\n"


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


@functools.lru_cache(maxsize=4)
def png_bomb(side: int = 30000) -> bytes:
    """A valid side×side 1-bit greyscale PNG of zeros: ~100 KB that would decode to side² pixels."""
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte "none" + packed bits
    rows_per_feed = 256
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row * rows_per_feed) for _ in range(side // rows_per_feed)]
    parts.append(compressor.compress(row * (side % rows_per_feed)))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
