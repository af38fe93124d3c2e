"""`sdserver models make-tiny-restorer`: seeded weights in the official file, where face_enhance looks for them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from sdserver.cli import main
from sdserver.engines.restore.restorer import load_restorer


def test_make_tiny_restorer_writes_the_official_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [name for name in os.environ if name.startswith("SDSERVER_")]:
        monkeypatch.delenv(name)
    assert main(["models", "make-tiny-restorer", "gfpgan-1.3", "--data-dir", str(tmp_path)]) == 0
    path = tmp_path / "models" / "face_restorers" / "GFPGANv1.3.pth"
    out = capsys.readouterr().out
    assert str(path) in out and "SDSERVER_FACE_RESTORER=gfpgan-1.3" in out
    assert list(torch.load(path, map_location="cpu", weights_only=True)) == ["params_ema"]
    assert load_restorer(path, "gfpgan-1.3", device="cpu").name == "gfpgan-1.3"


def test_make_tiny_restorer_refuses_an_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["models", "make-tiny-restorer", "gfpgan-9", "--data-dir", str(tmp_path)])
    assert exited.value.code == 2
