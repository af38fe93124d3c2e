"""Which model ids the API accepts; the seam the model registry (load_model and friends) plugs into."""

from __future__ import annotations

from sdserver.config import Settings
from sdserver.jobs import TEST_MODEL_PREFIX


class ModelCatalog:
    """For now: the test engine's models when that engine is enabled. The model registry extends this."""

    def __init__(self, settings: Settings):
        self._test_models = "test" in settings.engines

    def exists(self, model_id: str) -> bool:
        return self._test_models and model_id.startswith(TEST_MODEL_PREFIX)
