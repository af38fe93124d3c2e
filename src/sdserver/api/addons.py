"""Checks at the API edge that the LoRA, VAE, embedding and ControlNet ids a request names are loaded, and that each
LoRA fits the model's family; torch-free. They read the model registry (what load jobs recorded, the same on every
API host); only an id the registry has no row for is looked up in this host's models folder (files dropped in)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from sdserver.api.models import ModelCatalog
from sdserver.catalog.families import FamilyInfo
from sdserver.catalog.registry import ModelKind, ModelState
from sdserver.errors import ValidationError

_KIND_NAMES: Final = {
    ModelKind.LORA: "LoRA",
    ModelKind.VAE: "VAE",
    ModelKind.EMBEDDINGS: "embedding",
    ModelKind.CONTROLNET: "ControlNet",
}


def require_addons(models: ModelCatalog, kind: ModelKind, field: str, addon_ids: Sequence[str]) -> None:
    """Raise a field error naming the first id that is not a ready add-on of this kind."""
    name = _KIND_NAMES.get(kind, kind.value)
    for addon_id in addon_ids:
        state = models.addon_state(kind, addon_id)
        if state is ModelState.LOADING:
            raise ValidationError.for_field(field, f"the {name} is still loading; try again when it is ready", addon_id)
        if state is not ModelState.READY:
            raise ValidationError.for_field(field, f"not found: no {name} with this id is loaded", addon_id)


def require_lora_families(
    models: ModelCatalog, model_id: str, model: FamilyInfo | None, lora_ids: Sequence[str]
) -> None:
    """Refuse a LoRA whose keys show another family than the model's; a LoRA or model of unknown family passes (the
    worker then decides), since a wrong refusal would block a LoRA that works."""
    if model is None:
        return
    for lora_id in lora_ids:
        lora = models.lora_family(lora_id).info
        if lora is not None and lora.family is not model.family:
            rule = (
                f"is a {lora.family.value} LoRA and cannot apply to {model_id!r}, a {model.family.value} model; "
                f"use a LoRA trained for {model.family.value}"
            )
            raise ValidationError.for_field("lora_model", rule, lora_id)
