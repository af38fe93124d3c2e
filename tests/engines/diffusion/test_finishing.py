"""finish_images without a model: the A1111 `parameters` text, its PNG chunk, and the safety screen's wiring."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from sdserver import safety
from sdserver.engines.base import JobFailed
from sdserver.engines.diffusion.finishing import finish_images, generation_parameters
from tests.support.tiny_sd import make_job


def _text(png: bytes) -> str:
    with Image.open(io.BytesIO(png)) as image:
        return str(image.text["parameters"])  # type: ignore[attr-defined]


def _images(count: int) -> list[Image.Image]:
    return [Image.new("RGB", (64, 48), (10 * index, 20, 30)) for index in range(count)]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, "a photo of a cat\nSteps: 2, Sampler: Euler a, CFG scale: 7.5, Seed: 9, Size: 64x48, Model: m"),
        (
            {"prompt": "two\nlines", "negative_prompt": "ugly", "guidance_scale": 3.0},
            "two lines\nNegative prompt: ugly\n"
            "Steps: 2, Sampler: Euler a, CFG scale: 3, Seed: 9, Size: 64x48, Model: m",
        ),
        ({"prompt": "café ☕"}, "café ☕\nSteps: 2, Sampler: Euler a, CFG scale: 7.5, Seed: 9, Size: 64x48, Model: m"),
    ],
    ids=["plain", "negative-and-newline", "non-latin"],
)
def test_parameters_text_round_trips_through_the_png(params: dict[str, Any], expected: str) -> None:
    job = make_job("m", height=48, **params)
    assert generation_parameters(job, 9, "Euler a") == expected
    finished = finish_images(_images(2), job, seed=9, sampler="Euler a", nsfw_threshold=0.5)
    assert [_text(png) for png in finished.images] == [expected, expected.replace("Seed: 9", "Seed: 10")]
    assert finished.meta == {"nsfw_content_detected": False}


def test_extra_parameters_skip_none_and_quote_separators() -> None:
    text = generation_parameters(make_job("m"), 1, "DDIM", {"Clip skip": None, "Lora": "a: 1, b: 0.5", "VAE": "v"})
    assert text.endswith('Model: m, Lora: "a: 1, b: 0.5", VAE: v')


def test_safety_screen_gets_mode_and_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, float]] = []

    def screen(images: list[Image.Image], mode: str, threshold: float) -> safety.Screening:
        calls.append((mode, threshold))
        black = [Image.new("RGB", image.size) for image in images]
        return safety.Screening(images=[black[0], images[1]], flagged=[True, False], scores=[0.9, 0.1])

    monkeypatch.setattr(safety, "screen_images", screen)
    job = make_job("m", samples=2, safety_checker=True, safety_checker_type="pixelate")
    finished = finish_images(_images(2), job, seed=1, sampler="DDIM", nsfw_threshold=0.3)
    assert calls == [("pixelate", 0.3)]
    assert finished.meta == {
        "nsfw_content_detected": True,
        "nsfw_scores": [0.9, 0.1],
        "safety_checker_type": "pixelate",
    }
    with Image.open(io.BytesIO(finished.images[0])) as first:
        assert first.getextrema() == ((0, 0), (0, 0), (0, 0))


def test_unknown_safety_mode_fails_the_job() -> None:
    job = make_job("m", safety_checker=True, safety_checker_type="erase")
    with pytest.raises(JobFailed, match="safety_checker_type must be one of"):
        finish_images(_images(1), job, seed=1, sampler="DDIM", nsfw_threshold=0.5)
