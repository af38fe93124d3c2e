"""Request schema of the ControlNet endpoint and the rules that turn it into job params (on top of the generation
rules every generation endpoint shares)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final

from pydantic import AliasChoices, Field

from sdserver.api.fields import Flag, LenientFloat, OptionalText
from sdserver.api.schemas_generation import CommaList, ResolvedGeneration, Text2ImgRequest, resolve_generation
from sdserver.catalog.families import FamilyInfo
from sdserver.catalog.hints import HINT_TYPES, MAX_CONTROLNETS
from sdserver.errors import ValidationError
from sdserver.job_params import (
    DEFAULT_CONDITIONING_SCALE,
    DEFAULT_STRENGTH,
    ControlNetMode,
    ControlNetParams,
    ControlNetUnit,
    GenerationParams,
)

MAX_CONDITIONING_SCALE: Final = 5.0


class ControlNetRequest(Text2ImgRequest):
    """The generation fields plus the ControlNet ones. `prompt` may be left out when `guess_mode` is yes."""

    prompt: OptionalText = Field(  # type: ignore[assignment]
        default=None, description="What to draw; may be empty with guess_mode yes."
    )
    controlnet_model: CommaList = Field(
        default=None, description=f"ControlNet id, or a comma list of up to {MAX_CONTROLNETS} (MultiControlNet)."
    )
    controlnet_type: CommaList = Field(
        default=None,
        description="What the ControlNet reads (canny, depth, ...): one, or one per ControlNet. With auto_hint yes "
        f"it picks the hint preprocessor ({', '.join(sorted(HINT_TYPES))}).",
    )
    controlnet_conditioning_scale: CommaList = Field(
        default=None, description="ControlNet weight, 0–5 (default 1): one number, or a comma list, one per ControlNet."
    )
    auto_hint: Flag = Field(default=None, description="yes: make the hint from the picture (e.g. canny edges).")
    guess_mode: Flag = Field(default=None, description="yes: the ControlNet steers without relying on the prompt.")
    init_image: OptionalText = Field(
        default=None, description="Reference image; the control picture when no control_image is given."
    )
    control_image: OptionalText = Field(
        default=None, description="The control picture (or hint). With an init_image too, the job is img2img."
    )
    mask_image: OptionalText = Field(default=None, description="Mask for ControlNet inpainting: white is repainted.")
    strength: LenientFloat = Field(
        default=None,
        validation_alias=AliasChoices("strength", "prompt_strength"),
        description="How much to change the init image in img2img/inpaint mode, 0–1 (default 0.7).",
    )


@dataclass(frozen=True)
class ResolvedControlNet:
    """The validated ControlNet part of a request: one type and one scale per ControlNet."""

    mode: ControlNetMode
    models: list[str]
    types: list[str | None]
    scales: list[float]
    auto_hint: bool
    guess_mode: bool
    strength: float | None

    def job_params(self, generation: GenerationParams, image_keys: dict[str, str]) -> ControlNetParams:
        """The job's params, given the stored images by request field (init_image, control_image, mask_image); the
        control picture is the init image when the request sent no control_image."""
        from_image = self.mode is not ControlNetMode.TEXT2IMG
        generation = replace(
            generation,
            strength=generation.strength if self.strength is None else self.strength,
            init_image_key=image_keys.get("init_image") if from_image else None,
            mask_image_key=image_keys.get("mask_image"),
        )
        return ControlNetParams(
            generation=generation,
            units=tuple(ControlNetUnit(*unit) for unit in zip(self.models, self.types, self.scales, strict=True)),
            control_image_key=image_keys.get("control_image") or image_keys["init_image"],
            mode=self.mode,
            guess_mode=self.guess_mode,
            auto_hint=self.auto_hint,
        )

    def meta(self) -> dict[str, Any]:
        return {
            "controlnet_mode": self.mode.value,
            "controlnet_model": ",".join(self.models),
            "controlnet_type": ",".join(kind or "" for kind in self.types),
            "controlnet_conditioning_scale": self.scales[0] if len(self.scales) == 1 else self.scales,
            "auto_hint": "yes" if self.auto_hint else "no",
            "guess_mode": "yes" if self.guess_mode else "no",
            "strength": self.strength,
            "hint_preprocessors": sorted(HINT_TYPES),
        }


def resolve_controlnet(
    request: ControlNetRequest,
    *,
    model_id: str,
    controlnet_exists: Callable[[str], bool],
    enhance_suffix: str = "",
    family: FamilyInfo | None = None,
) -> tuple[ResolvedGeneration, ResolvedControlNet]:
    """The generation rules (the scheduler planned for the mode), then the ControlNet ones; every broken rule names
    its field and value."""
    guess_mode = bool(request.guess_mode)
    if request.prompt is None:
        if not guess_mode:
            raise ValidationError.for_field("prompt", "is required (unless guess_mode is yes)", None)
        request = request.model_copy(update={"prompt": ""})
        # Nothing to enhance: the enhancer text alone would become the whole prompt.
        enhance_suffix = ""
    mode = controlnet_mode(request)
    from_image = mode is not ControlNetMode.TEXT2IMG
    resolved = resolve_generation(
        request, model_id=model_id, enhance_suffix=enhance_suffix, from_image=from_image, family=family
    )
    models = _models(request.controlnet_model, controlnet_exists)
    auto_hint = bool(request.auto_hint)
    control = ResolvedControlNet(
        mode=mode,
        models=models,
        types=_types(request.controlnet_type, models, auto_hint=auto_hint),
        scales=_scales(request.controlnet_conditioning_scale, len(models)),
        auto_hint=auto_hint,
        guess_mode=guess_mode,
        strength=_strength(request.strength) if from_image else None,
    )
    return resolved, control


def controlnet_mode(request: ControlNetRequest) -> ControlNetMode:
    """inpaint with a mask; img2img when both a start image and a separate control image are given; otherwise
    text2img, with the control image (or the init image) only steering the ControlNet."""
    if request.init_image is None and request.control_image is None:
        raise ValidationError.for_field("init_image", "is required (or give a control_image)", None)
    if request.mask_image is not None:
        if request.init_image is None:
            raise ValidationError.for_field("init_image", "is required with a mask_image", None)
        return ControlNetMode.INPAINT
    if request.init_image is not None and request.control_image is not None:
        return ControlNetMode.IMG2IMG
    return ControlNetMode.TEXT2IMG


def _models(value: tuple[str, ...] | None, exists: Callable[[str], bool]) -> list[str]:
    models = list(value or ())
    if not models:
        raise ValidationError.for_field("controlnet_model", "is required", value)
    if len(models) > MAX_CONTROLNETS:
        raise ValidationError.for_field(
            "controlnet_model", f"names at most {MAX_CONTROLNETS} ControlNets", ",".join(models)
        )
    for model in models:
        if not exists(model):
            raise ValidationError.for_field("controlnet_model", "is not a ControlNet on this server", model)
    return models


def _per_model(field: str, values: list[Any], count: int, raw: tuple[str, ...] | None) -> list[Any]:
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise ValidationError.for_field(
            field, f"must be one value or one per ControlNet ({count})", ",".join(raw or ())
        )
    return values


def _types(value: tuple[str, ...] | None, models: list[str], *, auto_hint: bool) -> list[str | None]:
    given = [item.lower() for item in value or ()]
    # No type given: a ControlNet named after a type ("canny") is taken to be of that type.
    types: list[str | None] = (
        list(_per_model("controlnet_type", given, len(models), value))
        if given
        else [model.lower() if model.lower() in HINT_TYPES else None for model in models]
    )
    if auto_hint:
        for kind in types:
            if kind not in HINT_TYPES:
                supported = ", ".join(sorted(HINT_TYPES))
                raise ValidationError.for_field(
                    "controlnet_type",
                    f"auto_hint can make hints for {supported} only (send a ready control_image with auto_hint no)",
                    kind,
                )
    return types


def _scales(value: tuple[str, ...] | None, count: int) -> list[float]:
    items = list(value or ())
    if not items:
        return [DEFAULT_CONDITIONING_SCALE] * count
    scales: list[float] = []
    for item in items:
        try:
            number = float(item)
        except ValueError:
            raise ValidationError.for_field("controlnet_conditioning_scale", "must be a number", item) from None
        if not 0.0 <= number <= MAX_CONDITIONING_SCALE:
            raise ValidationError.for_field(
                "controlnet_conditioning_scale", f"must be between 0 and {MAX_CONDITIONING_SCALE:g}", number
            )
        scales.append(number)
    return _per_model("controlnet_conditioning_scale", scales, count, value)


def _strength(value: float | None) -> float:
    if value is None:
        return DEFAULT_STRENGTH
    if not 0.0 <= value <= 1.0:
        raise ValidationError.for_field("strength", "must be between 0 and 1", value)
    return value
