"""Checks at the API edge that the LoRA, VAE and embedding ids a request names exist: on this box's disk or ready
in the model registry (a worker on another box pulls the files), torch-free."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from sdserver.api.models import ModelCatalog
from sdserver.catalog.layout import AddonKind
from sdserver.errors import ValidationError

_KIND_NAMES: Final = {AddonKind.LORA: "LoRA", AddonKind.VAE: "VAE", AddonKind.EMBEDDING: "embedding"}


def require_addons(catalog: ModelCatalog, kind: AddonKind, field: str, addon_ids: Sequence[str]) -> None:
    """Raise a field error naming the first id that no add-on of this kind carries."""
    for addon_id in addon_ids:
        if not catalog.addon_exists(kind, addon_id):
            rule = f"not found: no {_KIND_NAMES.get(kind, kind.value)} with this id is loaded"
            raise ValidationError.for_field(field, rule, addon_id)
