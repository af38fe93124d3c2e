"""The job failure codes: one closed enum whose values are stable strings, each documented for clients."""

from __future__ import annotations

import re
from pathlib import Path

from sdserver.errors import JobErrorCode

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
