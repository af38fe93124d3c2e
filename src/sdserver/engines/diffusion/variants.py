"""Pipeline variants built on a loaded model's very modules (nothing is loaded twice): MultiDiffusion panorama and
self-attention guidance, for SD 1.x/2.x models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sdserver.engines.diffusion.loader import LOAD_OPTIONS, sibling_pipeline
from sdserver.jobs import JobKind

if TYPE_CHECKING:
    from sdserver.engines.diffusion.loader import LoadedModel


def panorama_pipeline(model: LoadedModel) -> Any:
    """`StableDiffusionPanoramaPipeline` on the model's text2img modules."""
    from diffusers import StableDiffusionPanoramaPipeline

    return _variant(StableDiffusionPanoramaPipeline, model)


def sag_pipeline(model: LoadedModel) -> Any:
    """`StableDiffusionSAGPipeline` on the model's text2img modules."""
    from diffusers import StableDiffusionSAGPipeline

    return _variant(StableDiffusionSAGPipeline, model)


def _variant(cls: Any, model: LoadedModel) -> Any:
    pipeline = sibling_pipeline(cls, model.pipelines[JobKind.TEXT2IMG], **LOAD_OPTIONS[model.family])
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
