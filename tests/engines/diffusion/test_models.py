"""Model ids and where models live on disk: strict ids, both formats, and no torch in the API's import path."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sdserver.catalog.ids import is_valid_model_id
from sdserver.catalog.layout import (
    ModelFormat,
    find_model,
    list_models,
)


def _folder(models_dir: Path, model_id: str) -> Path:
    folder = models_dir / "diffusers" / model_id
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    return folder


def _checkpoint(models_dir: Path, name: str) -> Path:
    file = models_dir / "checkpoints" / name
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(b"weights")
    return file


@pytest.mark.parametrize("model_id", ["sd-1.5", "realistic_vision_v5.1", "A1", "x" * 128])
def test_valid_ids(model_id: str) -> None:
    assert is_valid_model_id(model_id)


@pytest.mark.parametrize(
    "model_id",
    ["", ".", "..", "../etc", "a/b", "a\\b", ".hidden", "-dash", "a..b", "x" * 129, "a b", "é", "a\x00"],
    ids=["empty", "dot", "dotdot", "parent", "slash", "backslash", "hidden", "dash", "inner-dotdot", "long", "space",
         "non-ascii", "nul"],
)  # fmt: skip
def test_invalid_ids_never_become_paths(tmp_path: Path, model_id: str) -> None:
    assert not is_valid_model_id(model_id)
    assert find_model(tmp_path, model_id) is None


def test_finds_a_diffusers_folder(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "tiny")
    source = find_model(tmp_path, "tiny")
    assert source is not None
    assert (source.format, source.path, source.config_dir) == (ModelFormat.DIFFUSERS, folder, None)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_finds_a_single_file_checkpoint(tmp_path: Path, suffix: str) -> None:
    file = _checkpoint(tmp_path, f"tiny{suffix}")
    source = find_model(tmp_path, "tiny")
    assert source is not None
    assert (source.format, source.path, source.config_dir) == (ModelFormat.SINGLE_FILE, file, None)


def test_a_config_folder_beside_a_checkpoint_is_used(tmp_path: Path) -> None:
    _checkpoint(tmp_path, "tiny.safetensors")
    config = tmp_path / "checkpoints" / "tiny.config"
    config.mkdir()
    (config / "model_index.json").write_text("{}")
    source = find_model(tmp_path, "tiny")
    assert source is not None and source.config_dir == config


def test_a_folder_without_model_index_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "diffusers" / "half-copied").mkdir(parents=True)
    assert find_model(tmp_path, "half-copied") is None


def test_list_models_sorted_and_deduplicated(tmp_path: Path) -> None:
    _folder(tmp_path, "b-model")
    _checkpoint(tmp_path, "a-model.safetensors")
    _checkpoint(tmp_path, "b-model.ckpt")
    _checkpoint(tmp_path, "notes.txt")
    _checkpoint(tmp_path, "bad name.safetensors")
    sources = list_models(tmp_path)
    assert [(s.model_id, s.format) for s in sources] == [
        ("a-model", ModelFormat.SINGLE_FILE),
        ("b-model", ModelFormat.DIFFUSERS),
    ]


def test_list_models_of_a_missing_dir_is_empty(tmp_path: Path) -> None:
    assert list_models(tmp_path / "nowhere") == []


def test_fingerprint_changes_when_files_are_replaced(tmp_path: Path) -> None:
    file = _checkpoint(tmp_path, "tiny.safetensors")
    source = find_model(tmp_path, "tiny")
    assert source is not None
    before = source.fingerprint()
    file.write_bytes(b"other weights")
    os.utime(file, ns=(before + 10**9, before + 10**9))
    assert source.fingerprint() != before


def test_api_side_modules_import_without_torch() -> None:
    """The API validates model ids and scheduler names; importing those modules must never pull in torch."""
    code = textwrap.dedent(
        """
        import sys
        BLOCKED = {"torch", "diffusers", "transformers", "safetensors", "numpy", "PIL"}
        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked import of {name}")
                return None
        sys.meta_path.insert(0, Blocker())
        import sdserver.catalog.layout as models
        import sdserver.catalog.schedulers as table
        assert models.find_model(__import__("pathlib").Path("/nonexistent"), "sd-1.5") is None
        assert table.plan_scheduler("Euler a", True, None).class_name == "EulerAncestralDiscreteScheduler"
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
