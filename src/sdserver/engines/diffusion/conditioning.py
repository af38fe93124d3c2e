"""What each family's pipelines take beyond the arguments every pipeline shares: the prompts (a negative prompt
and clip skip where the family has them), SDXL's size conditioning, and which add-ons apply to the family."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Final

from sdserver.catalog.families import ModelFamily
from sdserver.catalog.families.capabilities import CLIP_SKIP, EMBEDDINGS, NEGATIVE_PROMPT, TOMESD
from sdserver.engines.base import JobFailed
from sdserver.engines.diffusion.addons import AddonRequest
from sdserver.engines.diffusion.loader import LoadedModel
from sdserver.engines.diffusion.prompts import clip_skip_kwargs
from sdserver.errors import JobErrorCode

# Families whose diffusers pipelines take `clip_skip` themselves (their own path reads hidden states only, which
# works on every transformers version); SD 1.x/2.x go through prompts.py instead.
_PIPELINE_CLIP_SKIP: Final = frozenset({ModelFamily.SDXL, ModelFamily.SDXL_REFINER, ModelFamily.SD3})
_SDXL_FAMILIES: Final = frozenset({ModelFamily.SDXL, ModelFamily.SDXL_REFINER})
_FLOW_FAMILIES: Final = frozenset({ModelFamily.SD3, ModelFamily.FLUX})


def family_clip_skip(model: LoadedModel, requested: int | None) -> int | None:
    """A1111 counting (1 = last layer, 2 = the one before) to diffusers' (layers skipped), within the model's depth;
    None where the family has no CLIP skip (Flux)."""
    if requested is None or requested <= 1 or not model.capabilities.applies(CLIP_SKIP):
        return None
    return min(requested - 1, model.text_layers - 1) or None


def prompt_kwargs(
    model: LoadedModel, pipeline: Any, prompt: str, negative_prompt: str | None, skip: int | None
) -> dict[str, Any]:
    """The prompt arguments of one pipeline call. Call inside `job_addons`: embeddings and text-encoder LoRA must
    shape these embeddings too."""
    negative = negative_prompt if model.capabilities.applies(NEGATIVE_PROMPT) else None
    kwargs: dict[str, Any] = {"prompt": prompt}
    if model.capabilities.applies(NEGATIVE_PROMPT):
        kwargs["negative_prompt"] = negative
    if skip is None:
        return kwargs
    if model.family in _PIPELINE_CLIP_SKIP:
        return kwargs | {"clip_skip": skip}
    return clip_skip_kwargs(pipeline, prompt, negative, skip)


def size_kwargs(model: LoadedModel, width: int, height: int) -> dict[str, Any]:
    """SDXL conditions on the original and target size (and crop): the job's size, so it renders a whole picture
    of that size rather than a crop of a larger one. SD3 and Flux take the output size in every kind (their
    img2img would otherwise render at the default size, whatever the input's)."""
    if model.family in _FLOW_FAMILIES:
        return {"height": height, "width": width}
    if model.family not in _SDXL_FAMILIES:
        return {}
    return {"original_size": (height, width), "target_size": (height, width), "crops_coords_top_left": (0, 0)}


def family_addons(model: LoadedModel, request: AddonRequest) -> tuple[AddonRequest, dict[str, Any]]:
    """The add-ons that apply to this model, and what `meta` reports about those that do not. Raises JobFailed
    (INVALID_PARAMS) for an add-on the family cannot take at all."""
    family = model.family.value
    if request.embeddings and not model.capabilities.applies(EMBEDDINGS):
        raise JobFailed(
            JobErrorCode.INVALID_PARAMS,
            f"embeddings_model: textual-inversion embeddings run with sd15 and sd2 models, not with this {family} "
            f"model ({model.model_id})",
        )
    if request.tomesd and not model.capabilities.applies(TOMESD):
        # Reported, never faked: token merging patches UNet attention, and this family has a transformer.
        return replace(request, tomesd=False), {"tomesd": f"unavailable: {family} models have no UNet"}
    return request, {}
