"""Where loaded models go on disk: staging names, file-type sniffing, atomic install and removal; torch-free."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from sdserver.catalog.ids import is_valid_model_id
from sdserver.catalog.layout import (
    ADDON_SUFFIXES,
    CHECKPOINTS_DIR,
    CONFIG_DIR_SUFFIX,
    DIFFUSERS_DIR,
    FOLDER_CONFIG,
    MODEL_INDEX,
    AddonKind,
    addon_dir,
    find_addon,
)
from sdserver.catalog.registry import ModelKind

# Downloads are staged beside their destination (same filesystem), so the final move is one atomic rename.
STAGING_DIR: Final = ".staging"
# Where a load's bytes come from (job params `source_type`).
SOURCE_URL: Final = "url"
SOURCE_HUB: Final = "hub"
SOURCE_LOCAL: Final = "local"
PART_SUFFIX: Final = ".part"

ADDON_KINDS: Final[dict[ModelKind, AddonKind]] = {
    ModelKind.LORA: AddonKind.LORA,
    ModelKind.VAE: AddonKind.VAE,
    ModelKind.EMBEDDINGS: AddonKind.EMBEDDING,
    ModelKind.CONTROLNET: AddonKind.CONTROLNET,
    ModelKind.UPSCALER: AddonKind.UPSCALER,
}
# Single-file suffixes a kind accepts, safetensors first; a pickle file takes the kind's pickle suffix.
_FILE_SUFFIXES: Final[dict[ModelKind, tuple[str, ...]]] = {
    ModelKind.CHECKPOINT: (".safetensors", ".ckpt"),
    **{kind: ADDON_SUFFIXES[addon] for kind, addon in ADDON_KINDS.items()},
}
# Kinds that may be a diffusers folder, and the file that marks one.
FOLDER_MARKERS: Final[dict[ModelKind, str]] = {
    ModelKind.CHECKPOINT: MODEL_INDEX,
    ModelKind.VAE: FOLDER_CONFIG,
    ModelKind.CONTROLNET: FOLDER_CONFIG,
}


class ModelFileError(Exception):
    """A file or folder that cannot become this kind of model; the message says why."""


def staging_dir(models_dir: Path) -> Path:
    return models_dir / STAGING_DIR


def part_path(models_dir: Path, kind: ModelKind, model_id: str, source: str) -> Path:
    """The partial download of this model from this source: a re-run finds it and resumes; another URL for the
    same id gets its own file, so bytes of two sources never mix."""
    _check_id(model_id)
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    return staging_dir(models_dir) / f"{kind.value}--{model_id}--{digest}{PART_SUFFIX}"


def stale_parts(models_dir: Path, kind: ModelKind, model_id: str) -> list[Path]:
    """Every partial download of this model, whatever its source."""
    _check_id(model_id)
    folder = staging_dir(models_dir)
    if not folder.is_dir():
        return []
    return sorted(folder.glob(f"{kind.value}--{model_id}--*"))


def sniff_suffix(kind: ModelKind, file: Path) -> str:
    """The suffix the bytes call for: safetensors (8-byte header length, then JSON) or the kind's pickle suffix."""
    with file.open("rb") as handle:
        head = handle.read(9)
    suffixes = _FILE_SUFFIXES[kind]
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100 * 1024 * 1024:
        if ".safetensors" in suffixes:
            return ".safetensors"
    elif head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        # A torch zip archive or a raw pickle.
        pickled = [suffix for suffix in suffixes if suffix != ".safetensors"]
        if pickled:
            return pickled[0]
        raise ModelFileError(f"a {kind.value} must be a .safetensors file; this one is a pickle (.ckpt/.pt)")
    raise ModelFileError(f"the file is not a safetensors or PyTorch weights file (starts with {head[:8]!r})")


def folder_marker_ok(kind: ModelKind, folder: Path) -> None:
    marker = FOLDER_MARKERS.get(kind)
    if marker is None:
        raise ModelFileError(f"a {kind.value} must be a single weights file, not a folder")
    if not (folder / marker).is_file():
        raise ModelFileError(f"the folder has no {marker}, so it is not a diffusers {kind.value} folder")


def install_file(models_dir: Path, kind: ModelKind, model_id: str, staged: Path) -> Path:
    """Move a staged weights file to its place (replacing an older copy of the same model); returns the path."""
    _check_id(model_id)
    suffix = sniff_suffix(kind, staged)
    target = _file_dir(models_dir, kind) / f"{model_id}{suffix}"
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_model_files(models_dir, kind, model_id, keep_config=True, staging=False)
    os.replace(staged, target)
    return target


def install_folder(models_dir: Path, kind: ModelKind, model_id: str, staged: Path) -> Path:
    """Move a staged diffusers folder to its place (replacing an older copy of the same model)."""
    _check_id(model_id)
    folder_marker_ok(kind, staged)
    target = (models_dir / DIFFUSERS_DIR if kind is ModelKind.CHECKPOINT else _file_dir(models_dir, kind)) / model_id
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_model_files(models_dir, kind, model_id, staging=False)
    os.replace(staged, target)
    return target


def remove_model_files(
    models_dir: Path, kind: ModelKind, model_id: str, *, keep_config: bool = False, staging: bool = True
) -> bool:
    """Delete every file of this model and, with `staging`, its partial downloads; True when anything was removed.
    `keep_config` keeps a checkpoint's `<id>.config/` folder (a new checkpoint file still uses it)."""
    _check_id(model_id)
    paths = stale_parts(models_dir, kind, model_id) if staging else []
    if kind is ModelKind.CHECKPOINT:
        paths.append(models_dir / DIFFUSERS_DIR / model_id)
        checkpoints = models_dir / CHECKPOINTS_DIR
        paths += [checkpoints / f"{model_id}{suffix}" for suffix in _FILE_SUFFIXES[kind]]
        if not keep_config:
            paths.append(checkpoints / f"{model_id}{CONFIG_DIR_SUFFIX}")
    else:
        base = _file_dir(models_dir, kind)
        paths.append(base / model_id)
        paths += [base / f"{model_id}{suffix}" for suffix in _FILE_SUFFIXES[kind]]
    removed = False
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            removed = True
        elif path.exists() or path.is_symlink():
            path.unlink()
            removed = True
    return removed


def local_import_path(source: str, import_dirs: Sequence[Path]) -> Path:
    """The resolved path of a local import, or ModelFileError when it is missing or outside every import dir."""
    path = Path(source.removeprefix("file://"))
    if not path.is_absolute():
        raise ModelFileError(f"a local path must be absolute, got {source!r}")
    allowed = [folder.resolve() for folder in import_dirs]
    if not allowed:
        raise ModelFileError("local paths are refused: no model_import_dirs are configured")
    # resolve() follows symlinks, so a link inside an import dir cannot point the import elsewhere.
    resolved = path.resolve()
    if not any(resolved.is_relative_to(folder) for folder in allowed):
        shown = ", ".join(str(folder) for folder in allowed)
        raise ModelFileError(f"{source!r} is outside the model import folders ({shown})")
    if not resolved.exists():
        raise ModelFileError(f"{source!r} does not exist")
    return resolved


def addon_on_disk(models_dir: Path, kind: ModelKind, model_id: str) -> bool:
    addon = ADDON_KINDS.get(kind)
    return addon is not None and find_addon(models_dir, addon, model_id) is not None


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def _file_dir(models_dir: Path, kind: ModelKind) -> Path:
    addon = ADDON_KINDS.get(kind)
    return models_dir / CHECKPOINTS_DIR if addon is None else addon_dir(models_dir, addon)


def _check_id(model_id: str) -> None:
    # Every caller validated the id already; this guard keeps a slip from ever becoming a path outside models/.
    if not is_valid_model_id(model_id):
        raise ModelFileError(f"{model_id!r} is not a valid model id")
