"""Where diffusion models live on disk and how a model id names one; torch-free, so the API can validate ids."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Final

from sdserver.catalog.ids import is_valid_model_id

if TYPE_CHECKING:
    from sdserver.config import Settings

DIFFUSERS_DIR: Final = "diffusers"
CHECKPOINTS_DIR: Final = "checkpoints"
CHECKPOINT_SUFFIXES: Final = (".safetensors", ".ckpt")
MODEL_INDEX: Final = "model_index.json"
# A diffusers-format config folder beside a checkpoint (`<id>.config/`) replaces the bundled SD 1.5 configs.
CONFIG_DIR_SUFFIX: Final = ".config"


class ModelFormat(StrEnum):
    DIFFUSERS = "diffusers"
    SINGLE_FILE = "single_file"


@dataclass(frozen=True)
class ModelSource:
    """One model on disk: a diffusers folder, or a single-file checkpoint with an optional config folder."""

    model_id: str
    format: ModelFormat
    path: Path
    config_dir: Path | None = None

    def fingerprint(self) -> int:
        """Changes when the files are replaced, so a cache never serves weights that were swapped under it."""
        marker = self.path / MODEL_INDEX if self.format is ModelFormat.DIFFUSERS else self.path
        try:
            return marker.stat().st_mtime_ns
        except OSError:
            return 0


def models_dir_for(settings: Settings) -> Path:
    """The models folder: `SDSERVER_MODELS_DIR` when set (a folder shared by many boxes), else `<data_dir>/models`."""
    return settings.models_path


def find_model(models_dir: Path, model_id: str) -> ModelSource | None:
    """The model stored under this id, or None (also for ids that are not valid names)."""
    if not is_valid_model_id(model_id):
        return None
    folder = models_dir / DIFFUSERS_DIR / model_id
    if (folder / MODEL_INDEX).is_file():
        return ModelSource(model_id, ModelFormat.DIFFUSERS, folder)
    for suffix in CHECKPOINT_SUFFIXES:
        file = models_dir / CHECKPOINTS_DIR / f"{model_id}{suffix}"
        if file.is_file():
            return ModelSource(model_id, ModelFormat.SINGLE_FILE, file, _config_dir_for(file))
    return None


def list_models(models_dir: Path) -> list[ModelSource]:
    """Every model on disk, sorted by id; a diffusers folder wins over a checkpoint with the same id."""
    ids: set[str] = set()
    folders = models_dir / DIFFUSERS_DIR
    if folders.is_dir():
        ids.update(entry.name for entry in folders.iterdir() if (entry / MODEL_INDEX).is_file())
    checkpoints = models_dir / CHECKPOINTS_DIR
    if checkpoints.is_dir():
        ids.update(
            entry.name.removesuffix(entry.suffix)
            for entry in checkpoints.iterdir()
            if entry.suffix in CHECKPOINT_SUFFIXES and entry.is_file()
        )
    sources = (find_model(models_dir, model_id) for model_id in sorted(ids))
    return [source for source in sources if source is not None]


def _config_dir_for(checkpoint: Path) -> Path | None:
    folder = checkpoint.with_name(checkpoint.name.removesuffix(checkpoint.suffix) + CONFIG_DIR_SUFFIX)
    return folder if (folder / MODEL_INDEX).is_file() else None


# Add-on weights, each kind in its own folder under the models dir. The model registry writes here; the engine
# reads from here. Ids are checked with is_valid_model_id before they touch a path.
class AddonKind(StrEnum):
    LORA = "lora"
    VAE = "vae"
    EMBEDDING = "embeddings"
    CONTROLNET = "controlnet"
    UPSCALER = "upscalers"


# Single-file suffixes each kind accepts, in lookup order; VAE and ControlNet may also be diffusers folders
# (`<id>/config.json`).
ADDON_SUFFIXES: Final[dict[AddonKind, tuple[str, ...]]] = {
    AddonKind.LORA: (".safetensors",),
    AddonKind.VAE: (".safetensors", ".pt", ".ckpt"),
    AddonKind.EMBEDDING: (".safetensors", ".pt", ".bin"),
    AddonKind.CONTROLNET: (".safetensors",),
    AddonKind.UPSCALER: (".pth", ".safetensors"),
}
FOLDER_CONFIG: Final = "config.json"
_FOLDER_KINDS: Final = frozenset({AddonKind.VAE, AddonKind.CONTROLNET})


def addon_dir(models_dir: Path, kind: AddonKind) -> Path:
    return models_dir / kind.value


def find_addon(models_dir: Path, kind: AddonKind, addon_id: str) -> Path | None:
    """The file (or diffusers folder, for VAE and ControlNet) stored under this id, or None."""
    if not is_valid_model_id(addon_id):
        return None
    base = addon_dir(models_dir, kind)
    if kind in _FOLDER_KINDS and (base / addon_id / FOLDER_CONFIG).is_file():
        return base / addon_id
    for suffix in ADDON_SUFFIXES[kind]:
        file = base / f"{addon_id}{suffix}"
        if file.is_file():
            return file
    return None


def list_addons(models_dir: Path, kind: AddonKind) -> list[str]:
    """Ids of every add-on of this kind on disk, sorted."""
    base = addon_dir(models_dir, kind)
    if not base.is_dir():
        return []
    ids: set[str] = set()
    for entry in base.iterdir():
        if entry.is_dir() and kind in _FOLDER_KINDS and (entry / FOLDER_CONFIG).is_file():
            ids.add(entry.name)
        elif entry.is_file() and entry.suffix in ADDON_SUFFIXES[kind]:
            ids.add(entry.name.removesuffix(entry.suffix))
    return sorted(model_id for model_id in ids if is_valid_model_id(model_id))
