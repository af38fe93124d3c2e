"""How many bytes a model will take once loaded, from its files' headers: every component the pipeline loads
(UNet or transformer, VAE, all text encoders, T5 included) at the engine's precision. The cache evicts by it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Final

from sdserver.catalog.families import read_safetensors_header
from sdserver.catalog.layout import MODEL_INDEX, ModelFormat, ModelSource
from sdserver.errors import UnsupportedModelError

WEIGHT_SUFFIXES: Final = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
# Components a folder may carry that the engine never loads (it has its own safety screen).
_NOT_LOADED: Final = frozenset({"safety_checker", "feature_extractor", "image_encoder"})
# Training leftovers in original checkpoints that single-file loading drops.
_DROPPED_PREFIXES: Final = ("model_ema.",)


def estimate_weight_bytes(source: ModelSource, bytes_per_weight: int) -> int:
    """Bytes the model's weights take at `bytes_per_weight` (4 fp32, 2 bf16/fp16). Pickled files count their size
    on disk, since only unpickling tells their tensors."""
    files = [source.path] if source.format is ModelFormat.SINGLE_FILE else folder_weight_files(source.path)
    return sum(_file_bytes(file, bytes_per_weight) for file in files)


def folder_weight_files(folder: Path) -> list[Path]:
    """The weight files `from_pretrained` reads: one set per component of model_index.json, without the variants
    (`*.fp16.safetensors`) when plain files exist, safetensors before pickles."""
    try:
        index = json.loads((folder / MODEL_INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    names = [name for name in index if not name.startswith("_") and name not in _NOT_LOADED]
    files: list[Path] = []
    for name in names:
        component = folder / name
        if component.is_dir():
            files.extend(_component_files(component))
    return files


def _component_files(component: Path) -> list[Path]:
    weights = sorted(entry for entry in component.iterdir() if entry.is_file() and entry.suffix in WEIGHT_SUFFIXES)
    for suffix in (".safetensors", ".bin"):
        of_kind = [entry for entry in weights if entry.suffix == suffix]
        plain = [entry for entry in of_kind if entry.name.count(".") == 1]
        if plain or of_kind:
            return plain or of_kind
    return weights


def _file_bytes(file: Path, bytes_per_weight: int) -> int:
    if file.suffix != ".safetensors":
        return _size(file)
    try:
        shapes = read_safetensors_header(file).shapes
    except UnsupportedModelError:
        return _size(file)
    weights = sum(math.prod(shape) for key, shape in shapes.items() if not key.startswith(_DROPPED_PREFIXES))
    return weights * bytes_per_weight


def _size(file: Path) -> int:
    try:
        return file.stat().st_size
    except OSError:
        return 0
