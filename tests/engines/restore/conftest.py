"""Seeded restorer weights in the official files, written once per session (they are full size: ~350 MB each)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sdserver.engines.restore.restorer import WEIGHT_STEMS
from sdserver.engines.restore.tiny import write_restorer_weights


@pytest.fixture(scope="session")
def restorer_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A face_restorers folder with GFPGANv1.4.pth, GFPGANv1.3.pth (same layout, linked) and codeformer.pth."""
    folder = tmp_path_factory.mktemp("models") / "face_restorers"
    gfpgan = write_restorer_weights(folder, "gfpgan-1.4", seed=1)
    os.link(gfpgan, folder / f"{WEIGHT_STEMS['gfpgan-1.3']}.pth")
    write_restorer_weights(folder, "codeformer", seed=2)
    return folder
