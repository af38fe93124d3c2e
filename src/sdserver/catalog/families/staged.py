"""Family of a model's files while they are still staged (a finished download or import, not yet installed), so a
load of an unsupported model fails before it replaces anything."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Final

from sdserver.catalog.families import FLOW_FAMILIES, detect_family, read_safetensors_header
from sdserver.catalog.families.checkpoints import detect_checkpoint
from sdserver.catalog.families.folders import scheduler_hints
from sdserver.catalog.families.kinds import FamilyInfo
from sdserver.errors import UnsupportedModelError

# A torch zip archive or a raw pickle: only a worker that unpickles can tell its family.
_PICKLE_MAGIC: Final = (b"PK\x03\x04", b"\x80")


def detect_staged(staged: Path, model_id: str, *, config_dir: Path | None = None) -> FamilyInfo | None:
    """`detect_family` for a staged folder or file (whose name is a staging name, not `<id>.safetensors`); messages
    name the model id instead of the staging name. None for pickled checkpoints."""
    try:
        if staged.is_dir():
            return detect_family(staged)
        with staged.open("rb") as handle:
            head = handle.read(4)
        if head.startswith(_PICKLE_MAGIC):
            return None
        info = detect_checkpoint(read_safetensors_header(staged), model_id)
        if config_dir is None or info.family in FLOW_FAMILIES:
            return info
        # The config folder beside an installed checkpoint (kept across reloads) refines what the keys say.
        prediction_type, few_step = scheduler_hints(config_dir)
        return replace(
            info, prediction_type=prediction_type or info.prediction_type, few_step=few_step or info.few_step
        )
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(exc.message.replace(staged.name, model_id)) from None
