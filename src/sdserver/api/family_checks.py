"""Refuses, at submit, a generation for a model that cannot run it: files of no supported layout, or a family that
cannot do the job's kind (an SDXL refiner from noise, ControlNet on a family without it). Checked before any job
row is written, so no worker loads (or evicts a model for) a job that would only fail."""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from sdserver.api.models import ModelCatalog
from sdserver.api.schemas_family import family_name
from sdserver.catalog.families import FamilyInfo
from sdserver.catalog.families.capabilities import model_capabilities
from sdserver.errors import UnsupportedModelError
from sdserver.jobs import JobKind

_KIND_NAMES: Final = {
    JobKind.TEXT2IMG: "text2img",
    JobKind.IMG2IMG: "img2img",
    JobKind.INPAINT: "inpaint",
    JobKind.CONTROLNET: "ControlNet",
}


def require_runnable(
    models: ModelCatalog, model_id: str, kind: JobKind, *, controlnet: bool = False
) -> FamilyInfo | None:
    """The model's family (None: unknown, the worker decides), or UnsupportedModelError naming the model id, its
    family and what it can run instead. `kind` is the generation kind (a ControlNet job's mode, with `controlnet`)."""
    detected = models.family(model_id)
    if detected.unsupported is not None:
        raise UnsupportedModelError(f"Model {model_id!r} cannot run on this server: {detected.unsupported}")
    family = detected.info
    if family is None:
        return None
    kinds = model_capabilities(family).kinds
    wanted = [JobKind.CONTROLNET, kind] if controlnet else [kind]
    for needed in wanted:
        if needed not in kinds:
            what = "an inpainting model, " if family.inpainting else ""
            job = f"ControlNet {_KIND_NAMES[kind]}" if controlnet and needed is kind else _KIND_NAMES[needed]
            raise UnsupportedModelError(
                f"Model {model_id!r} ({what}family {family_name(family)}) cannot run {job} jobs; "
                f"it runs {_listed(kinds)}"
            )
    return family


def _listed(kinds: Collection[JobKind]) -> str:
    return ", ".join(name for kind, name in _KIND_NAMES.items() if kind in kinds)
