"""The restorer networks have exactly the parameter names and shapes of the official weight files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdserver.engines.restore.restorer import RESTORER_NAMES, RestorerName, build_network

DATA = Path(__file__).parent / "data"
# GFPGAN v1.3 and v1.4 share one architecture (GFPGANv1Clean); the lists were written from the reference code.
LAYOUT_FILES: dict[RestorerName, str] = {
    "gfpgan-1.4": "gfpgan_v1_clean.json",
    "gfpgan-1.3": "gfpgan_v1_clean.json",
    "codeformer": "codeformer.json",
}


@pytest.mark.parametrize("name", RESTORER_NAMES)
def test_state_dict_matches_the_official_layout(name: RestorerName) -> None:
    official = json.loads((DATA / LAYOUT_FILES[name]).read_text())
    ours = {key: list(value.shape) for key, value in build_network(name).state_dict().items()}
    assert sorted(set(official) - set(ours)) == []
    assert sorted(set(ours) - set(official)) == []
    assert {key: shape for key, shape in ours.items() if official[key] != shape} == {}


def test_official_sizes() -> None:
    counts = {
        file: sum(_numel(shape) for shape in json.loads((DATA / file).read_text()).values())
        for file in set(LAYOUT_FILES.values())
    }
    # The published files hold 87.1 M (GFPGANv1.3/1.4.pth, 348 MB) and 94.1 M (codeformer.pth, 377 MB) floats.
    assert counts == {"gfpgan_v1_clean.json": 87_143_276, "codeformer.json": 94_112_707}


def _numel(shape: list[int]) -> int:
    total = 1
    for side in shape:
        total *= side
    return total
