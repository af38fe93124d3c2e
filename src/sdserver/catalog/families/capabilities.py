"""What each model family can run and its request defaults: schedulers, sizes, steps, guidance, the request fields
that do not apply, add-ons and ControlNet. Torch-free: the API plans and refuses with it at submit, the diffusion
engine checks the stored plan against the same table."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

from sdserver.catalog.families.kinds import FamilyInfo, FewStep, ModelFamily
from sdserver.catalog.scheduler_names import SAMPLING_SCHEDULERS
from sdserver.jobs import JobKind

# The samplers of the UNet families (SD 1.x/2.x, SDXL): every name that samples a Stable Diffusion model.
UNET_SCHEDULERS: Final = SAMPLING_SCHEDULERS
# Rectified-flow models (SD3, Flux) sample only with a flow-matching scheduler built from their own config; the
# noise-prediction samplers above would run but make garbage, so they are refused, never swapped silently.
FLOW_MATCH_SCHEDULER: Final = "FlowMatchEulerDiscreteScheduler"
FLOW_MATCH_SCHEDULERS: Final = frozenset({FLOW_MATCH_SCHEDULER})
UNET_DEFAULT_SCHEDULER: Final = "UniPCMultistepScheduler"
LCM_SCHEDULER: Final = "LCMScheduler"

ALL_KINDS: Final = frozenset({JobKind.TEXT2IMG, JobKind.IMG2IMG, JobKind.INPAINT, JobKind.CONTROLNET})
_NO_CONTROLNET: Final = ALL_KINDS - {JobKind.CONTROLNET}

# Request field names (as clients send them) that a family ignores; the API lists them in `meta.unsupported`.
NEGATIVE_PROMPT: Final = "negative_prompt"
CLIP_SKIP: Final = "clip_skip"
TOMESD: Final = "tomesd"
EMBEDDINGS: Final = "embeddings_model"
LORA: Final = "lora_model"
REFINER: Final = "refiner"
GUIDANCE: Final = "guidance_scale"
KARRAS: Final = "use_karras_sigmas"


@dataclass(frozen=True)
class FamilyCapabilities:
    """One family's limits and defaults. Sizes are in pixels (square defaults); `size_multiple` is what width and
    height must divide by (the VAE's 8x, times the transformer's 2x2 patches for SD3/Flux)."""

    family: ModelFamily
    kinds: frozenset[JobKind]
    schedulers: frozenset[str]
    default_scheduler: str
    default_size: int
    max_size: int
    size_multiple: int
    default_steps: int
    default_guidance: float
    max_guidance: float
    # Request fields the family has no use for: accepted, not applied, reported (`meta.unsupported`).
    unsupported_fields: frozenset[str]
    # Request fields the family cannot honour at all: a request that sets them is refused (invalid_params), and the
    # engine fails a stored job that has them.
    refused_fields: frozenset[str] = frozenset()
    lora: bool = True
    vae: bool = True

    def scheduler_error(self, class_name: str) -> str | None:
        """Why `class_name` cannot sample this family (naming the valid ones), or None when it can."""
        if class_name in self.schedulers:
            return None
        return (
            f"scheduler: {class_name} cannot sample a {self.family.value} model; "
            f"use one of {', '.join(sorted(self.schedulers))}"
        )

    def applies(self, field_name: str) -> bool:
        return field_name not in self.unsupported_fields and field_name not in self.refused_fields


def _unet_family(
    family: ModelFamily,
    *,
    kinds: frozenset[JobKind] = ALL_KINDS,
    default_size: int,
    max_size: int,
    default_steps: int,
    default_guidance: float,
    unsupported_fields: frozenset[str],
    refused_fields: frozenset[str] = frozenset(),
) -> FamilyCapabilities:
    """The UNet families share the samplers of the scheduler table and 8-pixel sizes."""
    return FamilyCapabilities(
        family,
        kinds=kinds,
        schedulers=UNET_SCHEDULERS,
        default_scheduler=UNET_DEFAULT_SCHEDULER,
        default_size=default_size,
        max_size=max_size,
        size_multiple=8,
        default_steps=default_steps,
        default_guidance=default_guidance,
        max_guidance=30.0,
        unsupported_fields=unsupported_fields,
        refused_fields=refused_fields,
    )


FAMILY_CAPABILITIES: Final[dict[ModelFamily, FamilyCapabilities]] = {
    ModelFamily.SD15: _unet_family(
        ModelFamily.SD15,
        default_size=512,
        max_size=1024,
        default_steps=20,
        default_guidance=7.5,
        unsupported_fields=frozenset({REFINER}),
    ),
    # The 768-v models are the common SD 2.x ones; the 512-base ones also run well at 768.
    ModelFamily.SD2: _unet_family(
        ModelFamily.SD2,
        default_size=768,
        max_size=1024,
        default_steps=20,
        default_guidance=7.5,
        unsupported_fields=frozenset({REFINER}),
    ),
    # SDXL textual inversions carry a CLIP-L and a bigG vector each; the engine loads single-encoder ones only.
    ModelFamily.SDXL: _unet_family(
        ModelFamily.SDXL,
        default_size=1024,
        max_size=2048,
        default_steps=25,
        default_guidance=7.0,
        unsupported_fields=frozenset(),
        refused_fields=frozenset({EMBEDDINGS}),
    ),
    # The refiner conditions on an aesthetic score instead of a target size: it only denoises given images.
    ModelFamily.SDXL_REFINER: _unet_family(
        ModelFamily.SDXL_REFINER,
        kinds=frozenset({JobKind.IMG2IMG, JobKind.INPAINT}),
        default_size=1024,
        max_size=2048,
        default_steps=25,
        default_guidance=7.0,
        unsupported_fields=frozenset({REFINER}),
        refused_fields=frozenset({EMBEDDINGS}),
    ),
    ModelFamily.SD3: FamilyCapabilities(
        ModelFamily.SD3,
        kinds=_NO_CONTROLNET,
        schedulers=FLOW_MATCH_SCHEDULERS,
        default_scheduler=FLOW_MATCH_SCHEDULER,
        default_size=1024,
        max_size=2048,
        size_multiple=16,
        default_steps=28,
        default_guidance=7.0,
        max_guidance=30.0,
        unsupported_fields=frozenset({TOMESD, REFINER, KARRAS}),
        refused_fields=frozenset({EMBEDDINGS}),
    ),
    ModelFamily.FLUX: FamilyCapabilities(
        ModelFamily.FLUX,
        kinds=_NO_CONTROLNET,
        schedulers=FLOW_MATCH_SCHEDULERS,
        default_scheduler=FLOW_MATCH_SCHEDULER,
        default_size=1024,
        max_size=2048,
        size_multiple=16,
        default_steps=28,
        # FLUX.1-dev's guidance is distilled into the transformer (an input, not classifier-free guidance).
        default_guidance=3.5,
        max_guidance=30.0,
        unsupported_fields=frozenset({NEGATIVE_PROMPT, CLIP_SKIP, TOMESD, REFINER, KARRAS}),
        refused_fields=frozenset({EMBEDDINGS}),
    ),
}


def family_capabilities(family: ModelFamily, few_step: FewStep | None = None) -> FamilyCapabilities:
    """The family's capabilities, with the few-step defaults of an LCM or FLUX.1-schnell model applied."""
    base = FAMILY_CAPABILITIES[family]
    if few_step is FewStep.LCM and LCM_SCHEDULER in base.schedulers:
        # LCM models sample in 4-8 steps with guidance near 1 (0-2); other samplers run but blur.
        return replace(base, default_scheduler=LCM_SCHEDULER, default_steps=6, default_guidance=1.0, max_guidance=2.0)
    if few_step is FewStep.SCHNELL and family is ModelFamily.FLUX:
        # schnell has no guidance embedder: guidance does nothing.
        return replace(
            base,
            default_steps=4,
            default_guidance=0.0,
            max_guidance=0.0,
            unsupported_fields=base.unsupported_fields | {GUIDANCE},
        )
    return base


def model_capabilities(info: FamilyInfo) -> FamilyCapabilities:
    """`family_capabilities` for one detected model: an inpainting model (9-channel UNet, FLUX.1 Fill) serves
    inpaint jobs only."""
    capabilities = family_capabilities(info.family, info.few_step)
    if info.inpainting:
        kinds = capabilities.kinds & {JobKind.INPAINT, JobKind.CONTROLNET}
        if info.family is ModelFamily.FLUX:
            # FLUX.1 Fill needs FluxFillPipeline, which has no ControlNet form.
            kinds = frozenset({JobKind.INPAINT})
        return replace(capabilities, kinds=kinds)
    return capabilities
