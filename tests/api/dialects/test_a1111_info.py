"""A1111's `parameters` text, as the engine writes it into PNGs, read back by png-info."""

from __future__ import annotations

import io

from PIL import Image

from sdserver.api.dialects.a1111_info import parse_parameters, png_text
from sdserver.api.dialects.a1111_schemas import Txt2ImgRequest, lora_tags, native_fields
from sdserver.engines.diffusion.finishing import encode_png_with_parameters


def test_parameters_text_parses_back_into_fields() -> None:
    text = (
        "a red house, at night\nNegative prompt: blurry\n"
        'Steps: 2, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Model: "a,b"'
    )
    assert parse_parameters(text) == {
        "Prompt": "a red house, at night",
        "Negative prompt": "blurry",
        "Steps": "2",
        "Sampler": "Euler a",
        "CFG scale": "7.5",
        "Seed": "42",
        "Model": "a,b",
    }


def test_png_text_reads_the_chunk_our_images_carry() -> None:
    data = encode_png_with_parameters(Image.new("RGB", (4, 4)), "a cat\nSteps: 3, Seed: 1")
    assert png_text(data) == {"parameters": "a cat\nSteps: 3, Seed: 1"}
    jpeg = io.BytesIO()
    Image.new("RGB", (4, 4)).save(jpeg, "JPEG")
    assert png_text(jpeg.getvalue()) == {}


def test_lora_tags_leave_the_prompt_and_become_loras() -> None:
    assert lora_tags("a cat <lora:ink:0.6>, <LORA:film> at dusk") == ("a cat , at dusk", ["ink", "film"], ["0.6", "1"])
    assert lora_tags("no tags") == ("no tags", [], [])


def test_restore_faces_and_enable_hr_become_the_native_passes() -> None:
    asked = native_fields(Txt2ImgRequest(prompt="a face", restore_faces=True, enable_hr="true"))
    assert asked["face_enhance"] == "yes" and asked["highres_fix"] == "yes"
    plain = native_fields(Txt2ImgRequest(prompt="a face", restore_faces=False))
    assert "face_enhance" not in plain and "highres_fix" not in plain
