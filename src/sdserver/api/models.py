"""Which model ids the API accepts and lists, and their families: the model registry (what load jobs recorded),
then models on disk under `<data_dir>/models/` that no load registered (detected here, torch-free, and cached)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sdserver.catalog.families import detect_source_family
from sdserver.catalog.families.cache import Detected, DetectionCache
from sdserver.catalog.families.loras import detect_lora
from sdserver.catalog.files import ADDON_KINDS, addon_on_disk
from sdserver.catalog.ids import UPSCALER_MODELS, is_valid_model_id
from sdserver.catalog.layout import (
    MODEL_INDEX,
    AddonKind,
    ModelFormat,
    find_addon,
    find_model,
    list_addons,
    list_models,
    models_dir_for,
)
from sdserver.catalog.registry import ModelKind, ModelRecord, ModelRegistry, ModelState
from sdserver.config import Settings
from sdserver.jobs import TEST_MODEL_PREFIX

_WEIGHT_SUFFIXES = (".pth", ".safetensors")
_UNKNOWN = Detected(None)


@dataclass(frozen=True)
class ModelEntry:
    """One model as listed: a registry row, or files found on disk that no load registered (`record` None)."""

    model_id: str
    kind: ModelKind
    state: ModelState
    loaded_at: datetime | None
    record: ModelRecord | None = None


class ModelCatalog:
    """Generation models: diffusers folders and checkpoints on disk, ready registry rows (a worker on another
    host may hold the files), and the test engine's when enabled. Upscalers: the official ids plus weight files
    under `<models dir>/upscalers/`. A model still loading is not accepted until it is ready."""

    def __init__(self, settings: Settings, registry: ModelRegistry | None = None):
        self._test_models = "test" in settings.engines
        self._models_dir = models_dir_for(settings)
        self._upscalers_dir = self._models_dir / "upscalers"
        self._registry = registry
        self._detections = DetectionCache()

    @property
    def models_dir(self) -> Path:
        return self._models_dir

    def exists(self, model_id: str) -> bool:
        if self._test_models and model_id.startswith(TEST_MODEL_PREFIX):
            return True
        if find_model(self._models_dir, model_id) is not None:
            return True
        return self._ready(ModelKind.CHECKPOINT, model_id)

    def upscaler_exists(self, model_id: str) -> bool:
        if model_id in UPSCALER_MODELS:
            return True
        if not is_valid_model_id(model_id):
            return False
        on_disk = any((self._upscalers_dir / f"{model_id}{suffix}").is_file() for suffix in _WEIGHT_SUFFIXES)
        return on_disk or self._ready(ModelKind.UPSCALER, model_id)

    def addon_exists(self, kind: AddonKind, addon_id: str) -> bool:
        """An add-on on this box's disk, or ready in the registry (its files may live on another box or the bucket)."""
        if find_addon(self._models_dir, kind, addon_id) is not None:
            return True
        return any(self._ready(model_kind, addon_id) for model_kind, addon in ADDON_KINDS.items() if addon is kind)

    def knows(self, model_id: str) -> bool:
        """Any usable model of any kind under this id (what verify_model answers)."""
        if not is_valid_model_id(model_id):
            return False
        if self.exists(model_id) or self.upscaler_exists(model_id):
            return True
        if any(addon_on_disk(self._models_dir, kind, model_id) for kind in ADDON_KINDS):
            return True
        return any(self._ready(kind, model_id) for kind in ModelKind)

    def all_models(self) -> list[ModelEntry]:
        """Registry rows (any state), then models on disk that were never registered; sorted by id and kind."""
        entries: dict[tuple[ModelKind, str], ModelEntry] = {}
        for record in self._registry.list() if self._registry is not None else []:
            entries[(record.kind, record.model_id)] = ModelEntry(
                record.model_id, record.kind, record.state, record.loaded_at, record
            )
        for source in list_models(self._models_dir):
            key = (ModelKind.CHECKPOINT, source.model_id)
            if key not in entries:
                entries[key] = ModelEntry(source.model_id, ModelKind.CHECKPOINT, ModelState.READY, _mtime(source.path))
        for kind, addon in ADDON_KINDS.items():
            for model_id in list_addons(self._models_dir, addon):
                if (kind, model_id) not in entries:
                    path = find_addon(self._models_dir, addon, model_id)
                    loaded = _mtime(path) if path is not None else None
                    entries[(kind, model_id)] = ModelEntry(model_id, kind, ModelState.READY, loaded)
        return sorted(entries.values(), key=lambda entry: (entry.model_id, entry.kind.value))

    def family(self, model_id: str) -> Detected:
        """A generation model's family: what its load recorded, else what its files on this host say (cached until
        they change). Unknown (None) for test models, pickled checkpoints and models whose files are elsewhere."""
        if self._test_models and model_id.startswith(TEST_MODEL_PREFIX):
            return _UNKNOWN
        record = self._record(ModelKind.CHECKPOINT, model_id)
        if record is not None and record.state is ModelState.READY and record.family is not None:
            return Detected(record.family_info)
        source = find_model(self._models_dir, model_id)
        if source is None:
            return _UNKNOWN
        marker = source.path / MODEL_INDEX if source.format is ModelFormat.DIFFUSERS else source.path
        return self._detections.get("checkpoint", marker, lambda: detect_source_family(source))

    def addon_state(self, kind: ModelKind, addon_id: str) -> ModelState | None:
        """An add-on's state: its registry row's, so every API host answers alike whichever box holds the files;
        without a row, a file dropped into this host's models folder counts as ready (None: neither)."""
        record = self._record(kind, addon_id)
        if record is not None:
            return record.state
        return ModelState.READY if addon_on_disk(self._models_dir, kind, addon_id) else None

    def lora_family(self, lora_id: str) -> Detected:
        """The family a LoRA's keys name (registry first, then a dropped-in file's header); None when unknown."""
        record = self._record(ModelKind.LORA, lora_id)
        if record is not None and record.family is not None:
            return Detected(record.family_info)
        path = find_addon(self._models_dir, AddonKind.LORA, lora_id)
        if path is None:
            return _UNKNOWN
        return self._detections.get("lora", path, lambda: detect_lora(path))

    def entry_family(self, entry: ModelEntry) -> Detected:
        """What get_all_models shows as an entry's family (checkpoints and LoRAs; other kinds have none)."""
        if entry.kind is ModelKind.CHECKPOINT and entry.state is ModelState.READY:
            return self.family(entry.model_id)
        if entry.kind is ModelKind.LORA and entry.state is ModelState.READY:
            return self.lora_family(entry.model_id)
        return _UNKNOWN

    def kinds_of(self, model_id: str) -> list[ModelKind]:
        """Every kind under which this id is registered or on disk (what delete_model removes)."""
        return sorted({entry.kind for entry in self.all_models() if entry.model_id == model_id})

    def _ready(self, kind: ModelKind, model_id: str) -> bool:
        record = self._record(kind, model_id)
        return record is not None and record.state is ModelState.READY

    def _record(self, kind: ModelKind, model_id: str) -> ModelRecord | None:
        if self._registry is None or not is_valid_model_id(model_id):
            return None
        return self._registry.get(kind, model_id)


def _mtime(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except OSError:
        return None
