"""Loading restorers: the official files load strictly, anything else is refused clearly, missing files say where."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from sdserver.engines.restore.restorer import (
    RestorerWeightsMissingError,
    load_restorer,
    restorer_placement,
    weights_path,
)
from sdserver.engines.restore.tiny import seeded_state_dict
from sdserver.engines.state_dicts import UnsupportedWeightsError


def test_missing_weights_name_the_file_and_folder(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "face_restorers"
    with pytest.raises(RestorerWeightsMissingError) as missing:
        weights_path(folder, "codeformer")
    message = str(missing.value)
    assert "codeformer.pth" in message and str(folder.resolve()) in message and "face_enhance: no" in message


def test_each_official_file_loads_strictly(restorer_weights: Path) -> None:
    for name in ("gfpgan-1.4", "gfpgan-1.3", "codeformer"):
        restorer = load_restorer(weights_path(restorer_weights, name), name, device="cpu", precision="fp32")  # type: ignore[arg-type]
        assert restorer.name == name and restorer.precision == "fp32"


def test_a_file_of_the_other_network_is_refused(restorer_weights: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "codeformer.pth"
    shutil.copyfile(restorer_weights / "GFPGANv1.4.pth", wrong)
    with pytest.raises(UnsupportedWeightsError, match=r"codeformer\.pth do not fit CodeFormer"):
        load_restorer(wrong, "codeformer", device="cpu")


def test_a_file_missing_one_tensor_is_refused(tmp_path: Path) -> None:
    state = seeded_state_dict("gfpgan-1.4")
    del state["stylegan_decoder.to_rgbs.6.bias"]
    path = tmp_path / "GFPGANv1.4.pth"
    torch.save({"params_ema": state}, path)
    with pytest.raises(UnsupportedWeightsError, match=r"Missing key.*to_rgbs\.6\.bias"):
        load_restorer(path, "gfpgan-1.4", device="cpu")


def test_fp16_is_never_used() -> None:
    # Both networks overflow in fp16; the CPU has no fast bf16 path to fall back on here, so fp32.
    assert restorer_placement("fp16", "cpu").precision == "fp32"
    assert restorer_placement("bf16", "cpu").precision == "bf16"
