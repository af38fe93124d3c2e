"""Add-on checks at the API edge consult the registry, not only this box's disk (the files may be on another box)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdserver.api.addons import require_addons
from sdserver.api.models import ModelCatalog
from sdserver.catalog.layout import AddonKind
from sdserver.catalog.registry import ModelKind, ModelRegistry
from sdserver.config import Settings
from sdserver.database import create_db_engine
from sdserver.errors import ValidationError


@pytest.fixture
def catalog(tmp_path: Path) -> tuple[ModelCatalog, ModelRegistry]:
    settings = Settings(data_dir=tmp_path)
    registry = ModelRegistry(create_db_engine(settings.sql_url))
    return ModelCatalog(settings, registry), registry


def test_an_addon_ready_in_the_registry_passes_without_files_here(catalog: tuple[ModelCatalog, ModelRegistry]) -> None:
    models, registry = catalog
    registry.begin_load(ModelKind.LORA, "ink", source="https://example.com/ink.safetensors")
    registry.begin_load(ModelKind.CONTROLNET, "edges", source="owner/edges")
    with pytest.raises(ValidationError, match="lora_model"):
        require_addons(models, AddonKind.LORA, "lora_model", ["ink"])  # still loading
    registry.mark_ready(ModelKind.LORA, "ink", format="safetensors", size=10)
    registry.mark_ready(ModelKind.CONTROLNET, "edges", format="diffusers", size=10)

    require_addons(models, AddonKind.LORA, "lora_model", ["ink"])
    assert models.addon_exists(AddonKind.CONTROLNET, "edges")
    assert not models.addon_exists(AddonKind.VAE, "ink"), "a LoRA id is not a VAE"
    with pytest.raises(ValidationError, match="no VAE with this id"):
        require_addons(models, AddonKind.VAE, "vae", ["ink"])


def test_an_addon_dropped_on_this_disk_passes_without_a_registry_row(
    catalog: tuple[ModelCatalog, ModelRegistry],
) -> None:
    models, _ = catalog
    (models.models_dir / "embeddings").mkdir(parents=True)
    (models.models_dir / "embeddings" / "style.pt").write_bytes(b"\x80")
    require_addons(models, AddonKind.EMBEDDING, "embeddings_model", ["style"])
