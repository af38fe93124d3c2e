"""Upscaler: sizes for every model and factor, alpha, greyscale and 16-bit inputs, determinism, bf16 vs fp32."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdserver.engines.precision import choose_placement, cpu_has_native_bf16
from sdserver.engines.upscale.archs import OFFICIAL_MODELS
from sdserver.engines.upscale.runner import Upscaler, load_upscaler, output_size
from sdserver.engines.upscale.tiny import write_official_weights
from tests.engines.upscale.test_tiling import smooth_image

SCALES = [1.0, 2.0, 2.5, 3.0, 4.0]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("upscalers")
    for model_id in OFFICIAL_MODELS:
        write_official_weights(folder, model_id)
    return folder


@pytest.fixture(scope="module")
def compact(weights: Path) -> Upscaler:
    return load_upscaler(weights / "realesr-general-x4v3.pth", precision="fp32")


@pytest.mark.parametrize("model_id", sorted(OFFICIAL_MODELS))
def test_output_size_for_every_model_and_scale(weights: Path, model_id: str) -> None:
    upscaler = load_upscaler(weights / f"{model_id}.pth", precision="fp32")
    image = smooth_image(32, 24)
    for scale in SCALES:
        result = upscaler.upscale(image, scale)
        assert result.size == output_size(32, 24, scale), scale
        assert result.mode == "RGB"


def test_output_size_rounds_half_up() -> None:
    assert output_size(33, 21, 2.5) == (83, 53)
    assert output_size(1, 1, 1.0) == (1, 1)


def test_odd_sizes_through_a_pixel_unshuffling_model(weights: Path) -> None:
    upscaler = load_upscaler(weights / "RealESRGAN_x2plus.pth", precision="fp32")
    assert upscaler.upscale(smooth_image(31, 17), 2).size == (62, 34)
    assert upscaler.upscale(smooth_image(31, 17), 3, tile=8).size == (93, 51)
    assert upscaler.upscale(Image.new("RGB", (1, 1), (200, 10, 10)), 4).size == (4, 4)


def test_scale_outside_one_to_four_is_refused(compact: Upscaler) -> None:
    with pytest.raises(ValueError, match="scale must be between 1 and 4"):
        compact.upscale(smooth_image(8, 8), 7)


def test_alpha_is_kept_and_transparent_stays_transparent(compact: Upscaler) -> None:
    rgba = smooth_image(40, 32).convert("RGBA")
    alpha = np.zeros((32, 40), np.uint8)
    alpha[8:24, 10:30] = 255
    rgba.putalpha(Image.fromarray(alpha))
    result = compact.upscale(rgba, 3)
    assert result.mode == "RGBA" and result.size == (120, 96)
    upscaled = np.asarray(result.getchannel("A"))
    assert (upscaled[:12, :] == 0).all() and (upscaled[:, :18] == 0).all()  # far from the opaque block
    assert (upscaled[36:60, 42:78] == 255).all()  # well inside it
    # The colour is the network's, as for an RGB input.
    expected = np.asarray(compact.upscale(rgba.convert("RGB"), 3), np.int16)
    assert np.array_equal(np.asarray(result.convert("RGB"), np.int16), expected)


def test_palette_with_transparency_becomes_rgba(compact: Upscaler) -> None:
    palette = smooth_image(16, 16).quantize(8)
    palette.info["transparency"] = 0
    assert compact.upscale(palette, 2).mode == "RGBA"


def test_greyscale_stays_greyscale(compact: Upscaler) -> None:
    grey = smooth_image(24, 20).convert("L")
    result = compact.upscale(grey, 2)
    assert result.mode == "L" and result.size == (48, 40)
    with_alpha = compact.upscale(grey.convert("LA"), 2)
    assert with_alpha.mode == "LA" and with_alpha.size == (48, 40)


def test_sixteen_bit_greyscale_keeps_sixteen_bits(compact: Upscaler) -> None:
    ramp = (np.linspace(0, 65535, 24 * 20).reshape(20, 24)).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, "PNG")
    decoded = Image.open(io.BytesIO(buffer.getvalue()))
    assert decoded.mode == "I;16"
    result = compact.upscale(decoded, 2)
    assert result.mode == "I;16" and result.size == (48, 40)
    values = np.asarray(result)
    assert values.dtype == np.uint16 and values.max() > 255  # not squeezed into 8 bits
    # The same picture at 8 bits comes out close to the top byte of the 16-bit result.
    eight = np.asarray(compact.upscale(Image.fromarray((ramp >> 8).astype(np.uint8)), 2), np.float32)
    assert np.abs(values / 257.0 - eight).mean() < 2.0


def test_sixteen_bit_colour_png_is_read(compact: Upscaler, tmp_path: Path) -> None:
    rgb16 = (np.asarray(smooth_image(16, 12), np.uint16) * 257).astype(">u2")
    Image.frombytes("RGB", (16, 12), rgb16.tobytes(), "raw", "RGB;16B").save(tmp_path / "x.png")
    result = compact.upscale(Image.open(tmp_path / "x.png"), 2)
    assert result.size == (32, 24) and result.mode == "RGB"


def test_same_input_gives_identical_bytes(compact: Upscaler) -> None:
    image = smooth_image(48, 40)

    def png() -> bytes:
        buffer = io.BytesIO()
        compact.upscale(image, 2.5, tile=32).save(buffer, "PNG")
        return buffer.getvalue()

    assert png() == png()


def test_progress_is_reported_per_tile(compact: Upscaler) -> None:
    steps: list[tuple[int, int]] = []
    compact.upscale(smooth_image(64, 40), 2, tile=32, on_tile=lambda done, total: steps.append((done, total)))
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    steps.clear()
    compact.upscale(smooth_image(20, 20), 2, on_tile=lambda done, total: steps.append((done, total)))
    assert steps == [(1, 1)]


def test_precision_choice() -> None:
    assert choose_placement("auto", "cuda").dtype == torch.float16
    assert choose_placement("auto", "cpu").dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert choose_placement("fp32", "cpu").dtype == torch.float32
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_placement("int8", "cpu")  # type: ignore[arg-type]


def test_bf16_is_close_to_fp32(weights: Path, record_property: Callable[[str, object], None]) -> None:
    image = smooth_image(48, 48)
    fp32 = load_upscaler(weights / "RealESRGAN_x4plus.pth", precision="fp32")
    bf16 = load_upscaler(weights / "RealESRGAN_x4plus.pth", precision="bf16")
    assert bf16.precision == "bf16"
    timings = {}
    outputs = {}
    for name, upscaler in (("fp32", fp32), ("bf16", bf16)):
        upscaler.upscale(image, 4)  # first run builds the kernels
        started = time.perf_counter()
        outputs[name] = np.asarray(upscaler.upscale(image, 4), np.float32)
        timings[name] = time.perf_counter() - started
    difference = float(np.abs(outputs["fp32"] - outputs["bf16"]).mean())
    ratio = timings["fp32"] / timings["bf16"]
    record_property("bf16_mean_abs_diff_grey_levels", round(difference, 3))
    record_property("bf16_speedup", round(ratio, 2))
    print(f"RealESRGAN_x4plus 48x48: bf16 vs fp32 mean |diff| {difference:.3f} grey levels, {ratio:.2f}x faster")
    assert outputs["fp32"].std() > 20  # a busy image, so the difference means something
    assert difference < 1.0
