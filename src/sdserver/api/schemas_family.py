"""The per-family part of request planning, read from the capability table (catalog/families/capabilities.py):
defaults for fields a request leaves out, size and guidance limits, and the request fields that do not apply to the
model's family (dropped from the job and reported in `meta.unsupported`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from sdserver.catalog.families import FamilyInfo
from sdserver.catalog.families.capabilities import (
    CLIP_SKIP,
    EMBEDDINGS,
    FLOW_MATCH_SCHEDULER,
    GUIDANCE,
    KARRAS,
    LORA,
    NEGATIVE_PROMPT,
    REFINER,
    TOMESD,
    model_capabilities,
)
from sdserver.errors import ValidationError
from sdserver.job_params import DEFAULT_GUIDANCE_SCALE, DEFAULT_SCHEDULER_NAME, DEFAULT_STEPS

# Today's rules, for models whose family is not known (test models, pickled checkpoints): contract section 2.3.
LEGACY_SIDE: Final = 512
LEGACY_MAX_SIDE: Final = 1024
LEGACY_GUIDANCE: Final = (1.0, 20.0)
MIN_SIDE: Final = 64
# Why a field does not apply, by field; `{family}` is the model's family.
_WHY: Final = {
    NEGATIVE_PROMPT: "{family} models sample without a negative-prompt pass; the negative prompt is not used",
    CLIP_SKIP: "{family} models do not take clip_skip; it is not used",
    TOMESD: "token merging patches UNet attention; {family} models have none, so it is not used",
    EMBEDDINGS: "textual-inversion embeddings are not loaded for {family} models",
    LORA: "LoRAs are not applied to {family} models",
    REFINER: "only SDXL base models have a refiner pass; {family} models run without one",
    GUIDANCE: "{family} models were distilled without guidance; guidance_scale is not used",
    KARRAS: "{family} models sample with a flow-matching scheduler, which has no Karras sigmas",
}

# Why a field is refused, by field.
_REFUSED: Final = {
    EMBEDDINGS: "textual-inversion embeddings work with sd15 and sd2 models only, not {family} models",
}


@dataclass(frozen=True)
class FamilyPlan:
    """What the request rules read from the family; `name` is shown in messages (None: family unknown).
    `cap_guidance`: above `guidance_range` the value is capped rather than refused (few-step models, to which
    clients send 7.5 out of habit)."""

    name: str | None
    default_side: int
    max_side: int
    side_multiple: int
    default_steps: int
    default_guidance: float
    guidance_range: tuple[float, float]
    cap_guidance: bool
    default_scheduler: str
    unsupported_fields: frozenset[str] = field(default_factory=frozenset)
    refused_fields: frozenset[str] = field(default_factory=frozenset)

    def for_model(self) -> str:
        return f" for {self.name} models" if self.name else ""


def plan_family(family: FamilyInfo | None) -> FamilyPlan:
    if family is None:
        return FamilyPlan(
            None,
            LEGACY_SIDE,
            LEGACY_MAX_SIDE,
            8,
            DEFAULT_STEPS,
            DEFAULT_GUIDANCE_SCALE,
            LEGACY_GUIDANCE,
            False,
            DEFAULT_SCHEDULER_NAME,
        )
    caps = model_capabilities(family)
    few_step = family.few_step is not None
    # The contract's floor of 1 holds for the UNet families' classifier-free guidance; the flow families (Flux's is
    # distilled, SD3 skips guidance at 1 or less) and few-step models take 0 and up.
    low = LEGACY_GUIDANCE[0] if FLOW_MATCH_SCHEDULER not in caps.schedulers and not few_step else 0.0
    return FamilyPlan(
        family_name(family),
        caps.default_size,
        caps.max_size,
        caps.size_multiple,
        caps.default_steps,
        caps.default_guidance,
        (low, caps.max_guidance),
        few_step,
        caps.default_scheduler,
        caps.unsupported_fields,
        caps.refused_fields,
    )


def family_name(family: FamilyInfo) -> str:
    """`sdxl`, or `sd15 (lcm)` for a few-step model: how messages name a model's family."""
    return f"{family.family.value} ({family.few_step.value})" if family.few_step else family.family.value


def fields_not_applying(plan: FamilyPlan, request: Any) -> dict[str, str]:
    """The fields the request set that this family does not use, each with why; a field the family cannot honour
    at all (the capability table's `refused_fields`) is a field error instead, naming the family."""
    for name in sorted(plan.refused_fields):
        value = getattr(request, name, None)
        if _given(value):
            shown = ",".join(value) if isinstance(value, tuple) else value
            rule = _REFUSED.get(name, "cannot be used with {family} models").format(family=plan.name)
            raise ValidationError.for_field(name, rule, shown)
    return {
        name: _WHY.get(name, "{family} models do not use it").format(family=plan.name)
        for name in sorted(plan.unsupported_fields)
        if _given(getattr(request, name, None))
    }


def side_for(field: str, value: int | None, plan: FamilyPlan) -> int:
    """A width or height: the family's default, or the value checked against its cap and rounded down to the
    family's block size (8 pixels; SD3 and Flux 16: the VAE's 8 times 2x2 patches), as the vendor and A1111 do."""
    if value is None:
        return plan.default_side
    if value < MIN_SIDE:
        raise ValidationError.for_field(field, f"must be at least {MIN_SIDE}", value)
    if value > plan.max_side:
        raise ValidationError.for_field(field, f"must be at most {plan.max_side}{plan.for_model()}", value)
    return value - value % plan.side_multiple


def guidance_for(value: float | None, plan: FamilyPlan, *, ignored: bool) -> tuple[float, bool]:
    """The guidance used, and whether it was capped (few-step models: clients send 7.5 out of habit)."""
    low, high = plan.guidance_range
    if value is None or ignored:
        return plan.default_guidance, False
    if plan.cap_guidance and value > high:
        return high, True
    if not low <= value <= high:
        rule = f"must be between {low:g} and {high:g}{plan.for_model()}"
        raise ValidationError.for_field("guidance_scale", rule, value)
    return value, False


def _given(value: object) -> bool:
    # A flag sent as "no" asks for nothing this family lacks.
    return value is not None and value is not False and value != "" and value != ()
