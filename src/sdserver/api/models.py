"""Which model ids the API accepts and lists: models in the models folder plus the model registry."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sdserver.catalog.files import ADDON_KINDS, addon_on_disk
from sdserver.catalog.ids import UPSCALER_MODELS, is_valid_model_id
from sdserver.catalog.layout import AddonKind, find_addon, find_model, list_addons, list_models, models_dir_for
from sdserver.catalog.registry import ModelKind, ModelRecord, ModelRegistry, ModelState
from sdserver.config import Settings
from sdserver.jobs import TEST_MODEL_PREFIX

_WEIGHT_SUFFIXES = (".pth", ".safetensors")


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

    def kinds_of(self, model_id: str) -> list[ModelKind]:
        """Every kind under which this id is registered or on disk (what delete_model removes)."""
        return sorted({entry.kind for entry in self.all_models() if entry.model_id == model_id})

    def _ready(self, kind: ModelKind, model_id: str) -> bool:
        if self._registry is None or not is_valid_model_id(model_id):
            return False
        record = self._registry.get(kind, model_id)
        return record is not None and record.state is ModelState.READY


def _mtime(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except OSError:
        return None
