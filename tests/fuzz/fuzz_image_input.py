"""Coverage-guided fuzz target (atheris) for image input: base64, data URL or raw bytes to an image or an SdError.

Run: python tests/fuzz/fuzz_image_input.py -max_total_time=60 -rss_limit_mb=2048 [corpus_dir ...]
With no corpus directory, a seed corpus (PNG, JPEG, WebP, GIF, a PNG bomb, a truncated PNG, in every input
spelling) is written to a temporary directory first. Any exception other than SdError is a crash.
"""

from __future__ import annotations

import base64
import sys
import tempfile
from pathlib import Path

import atheris

# Runnable as a script from anywhere: the repository root holds the `tests` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

INSTRUMENTED = True
try:
    # PIL's format plugins are Python code: instrumenting them guides the fuzzer through container parsing.
    with atheris.instrument_imports(include=["sdserver.images", "PIL"]):
        import PIL.Image  # noqa: F401

        from sdserver.images import ImageLimits, decode_base64_payload, inspect_image
except Exception as exc:  # pragma: no cover - depends on the interpreter atheris supports
    INSTRUMENTED = False
    print(f"atheris could not instrument this Python ({exc!r}); fuzzing without coverage guidance", file=sys.stderr)
    from sdserver.images import ImageLimits, decode_base64_payload, inspect_image

from sdserver.errors import SdError  # noqa: E402
from tests.support import image_files  # noqa: E402

# The production defaults (config.py): 10 MiB encoded, 6000x6000 decoded.
LIMITS = ImageLimits(max_bytes=10 * 1024 * 1024, max_pixels=6000 * 6000)
FIELD = "init_image"
# The first input byte picks how the rest reaches the library, as a client could send it.
RAW, BASE64, DATA_URL, TEXT = range(4)


def decode(data: bytes) -> None:
    """One input through the library: decoded to pixels, or an SdError. Anything else propagates (a crash)."""
    if not data:
        return
    mode, payload = data[0] % 4, data[1:]
    try:
        if mode == RAW:
            raw = payload
        elif mode == BASE64:
            raw = decode_base64_payload(base64.b64encode(payload).decode(), field=FIELD, max_bytes=LIMITS.max_bytes)
        elif mode == DATA_URL:
            text = "data:image/png;base64," + base64.b64encode(payload).decode()
            raw = decode_base64_payload(text, field=FIELD, max_bytes=LIMITS.max_bytes)
        else:
            # Arbitrary text in the field: data URL headers, whitespace, URL-safe alphabet, junk.
            raw = decode_base64_payload(payload.decode("utf-8", "replace"), field=FIELD, max_bytes=LIMITS.max_bytes)
        image = inspect_image(raw, LIMITS, field=FIELD)
        pixels = image.to_pil()
        assert pixels.size in ((image.width, image.height), (image.height, image.width)), "size changed"
        assert pixels.mode in ("RGB", "RGBA"), pixels.mode
    except SdError:
        pass


def seed_corpus(folder: Path) -> int:
    """Write the seeds: every sample image in every input spelling. Returns the number of files."""
    samples = {
        "png": image_files.png_bytes(16, 12),
        "png_rgba": image_files.png_bytes(8, 8, (1, 2, 3, 100), mode="RGBA"),
        "png_i16": image_files.png_bytes(8, 8, mode="I;16"),
        "png_palette": image_files.palette_png_with_transparency(),
        "jpeg": image_files.jpeg_bytes(16, 12),
        "jpeg_exif": image_files.jpeg_with_exif_orientation(),
        "webp": image_files.webp_bytes(16, 12),
        "gif": image_files.gif_bytes(8, 8),
        "bomb": image_files.png_bomb(),
        "truncated": image_files.truncated_png(),
        "html": image_files.html_as_png(),
    }
    count = 0
    for name, raw in samples.items():
        spellings = {
            RAW: raw,
            BASE64: raw,
            DATA_URL: raw,
            TEXT: b"data:image/png;base64, " + base64.urlsafe_b64encode(raw).rstrip(b"="),
        }
        for mode, payload in spellings.items():
            (folder / f"{name}-{mode}").write_bytes(bytes([mode]) + payload)
            count += 1
    return count


def main() -> None:
    args = list(sys.argv)
    if not any(not arg.startswith("-") for arg in args[1:]):
        corpus = Path(tempfile.mkdtemp(prefix="fuzz-image-corpus-"))
        print(f"seed corpus: {seed_corpus(corpus)} files in {corpus}", file=sys.stderr)
        args.append(str(corpus))
    if not any(arg.startswith("-max_len=") for arg in args):
        args.append("-max_len=262144")  # room for the ~100 KB bomb seed and its base64 spelling
    print(f"instrumented: {INSTRUMENTED}", file=sys.stderr)
    atheris.Setup(args, decode)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
