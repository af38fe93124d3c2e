"""Builds the engines `settings.engines` names; heavy engine modules are imported only when named."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sdserver.engines.base import Engine
from sdserver.engines.model_files import ModelFiles

if TYPE_CHECKING:
    from sdserver.config import Settings
    from sdserver.objects.base import ObjectStore

DIFFUSION_ENGINE = "diffusers"
UPSCALE_ENGINE = "upscale"
MODELS_ENGINE = "models"


def build_engines(settings: Settings, objects: ObjectStore | None = None) -> list[Engine]:
    """The engines `settings.engines` names, in that order. Engines that read job inputs get the object store."""
    # Imported here: heavy engines must load only when named (torch only in workers that run one).
    from sdserver.engines.fake import FakeEngine

    # One per worker: the engines share its connection pool to the manifests.
    files = ModelFiles(settings, objects)
    engines: list[Engine] = []
    seen: set[str] = set()
    for name in settings.engines:
        if name in seen:
            continue
        seen.add(name)
        if name == FakeEngine.name:
            engines.append(FakeEngine())
        elif name in (UPSCALE_ENGINE, DIFFUSION_ENGINE):
            engines.append(_device_engine(name, settings, objects, files))
        elif name == MODELS_ENGINE:
            from sdserver.engines.model_loader import ModelLoaderEngine

            engines.append(ModelLoaderEngine(settings, files=files))
        else:
            known = ", ".join(sorted({DIFFUSION_ENGINE, UPSCALE_ENGINE, MODELS_ENGINE, FakeEngine.name}))
            raise ValueError(f"engines: unknown engine {name!r}; known engines are {known}")
    return engines


def _device_engine(name: str, settings: Settings, objects: ObjectStore | None, files: ModelFiles) -> Engine:
    # torch loads only in workers that run these engines, never in the API process.
    if objects is None:
        raise ValueError(f"the {name} engine needs the object store to read its input images")
    if name == UPSCALE_ENGINE:
        from sdserver.engines.upscale.engine import UpscaleEngine

        return UpscaleEngine(settings, objects, precision=settings.upscale_precision, files=files)
    from sdserver.engines.diffusion.engine import DiffusionEngine

    return DiffusionEngine(
        settings,
        objects,
        max_loaded=settings.diffusion_max_loaded,
        precision=settings.diffusion_precision,
        files=files,
    )
