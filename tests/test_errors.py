"""The job failure codes: one closed enum whose values are stable strings, each documented for clients."""

from __future__ import annotations

import re
from pathlib import Path

from sdserver.errors import JobErrorCode, ValidationError

README = Path(__file__).resolve().parents[1] / "README.md"


def test_codes_are_distinct_snake_case_strings() -> None:
    values = [code.value for code in JobErrorCode]
    assert len(set(values)) == len(values)
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", value) for value in values), values
    assert JobErrorCode.IMAGE_NOT_FOUND == "image_not_found", "a StrEnum: stored and sent as its plain value"


def test_every_code_is_listed_in_the_readme() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("**Failed jobs**") :].split("\n- ", 1)[0]
    undocumented = [code.value for code in JobErrorCode if f"`{code.value}`" not in section]
    assert undocumented == [], f"add {undocumented} to the README's Failed jobs list"


def test_a_missing_value_reads_got_nothing_and_others_are_quoted() -> None:
    assert ValidationError.for_field("prompt", "is required", None).message == "prompt: is required, got nothing"
    assert ValidationError.for_field("crop", "must be a flag", "maybe").message == "crop: must be a flag, got 'maybe'"
    long = ValidationError.for_field("prompt", "is too long", "x" * 200).message
    assert long.endswith("...") and len(long) < 120
