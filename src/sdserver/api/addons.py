"""Checks at the API edge that the LoRA, VAE and embedding ids a request names are on disk (torch-free)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

from sdserver.catalog.layout import AddonKind, find_addon, models_dir_for
from sdserver.errors import ValidationError

_KIND_NAMES: Final = {AddonKind.LORA: "LoRA", AddonKind.VAE: "VAE", AddonKind.EMBEDDING: "embedding"}


def require_addons(data_dir: Path, kind: AddonKind, field: str, addon_ids: Sequence[str]) -> None:
    """Raise a field error naming the first id that no add-on of this kind on disk carries."""
    models_dir = models_dir_for(data_dir)
    for addon_id in addon_ids:
        if find_addon(models_dir, kind, addon_id) is None:
            rule = f"not found: no {_KIND_NAMES.get(kind, kind.value)} with this id is loaded"
            raise ValidationError.for_field(field, rule, addon_id)
