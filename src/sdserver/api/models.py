"""Which model ids the API accepts; the seam the model registry (load_model and friends) plugs into."""

from __future__ import annotations

from sdserver.config import Settings
from sdserver.engines.diffusion.models import find_model, models_dir_for
from sdserver.jobs import TEST_MODEL_PREFIX
from sdserver.model_ids import UPSCALER_MODELS, is_valid_model_id

_WEIGHT_SUFFIXES = (".pth", ".safetensors")


class ModelCatalog:
    """Generation models: diffusers folders and checkpoints under `<data_dir>/models/`, plus the test engine's
    when enabled. Upscalers: the official ids plus weight files
    dropped into `<data_dir>/models/upscalers/`. The model registry extends this."""

    def __init__(self, settings: Settings):
        self._test_models = "test" in settings.engines
        self._models_dir = models_dir_for(settings.data_dir)
        self._upscalers_dir = self._models_dir / "upscalers"

    def exists(self, model_id: str) -> bool:
        if self._test_models and model_id.startswith(TEST_MODEL_PREFIX):
            return True
        return find_model(self._models_dir, model_id) is not None

    def upscaler_exists(self, model_id: str) -> bool:
        if model_id in UPSCALER_MODELS:
            return True
        if not is_valid_model_id(model_id):
            return False
        return any((self._upscalers_dir / f"{model_id}{suffix}").is_file() for suffix in _WEIGHT_SUFFIXES)
