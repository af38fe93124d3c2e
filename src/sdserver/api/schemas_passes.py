"""The generation-pass fields (`upscale`, `highres_fix`, `panorama`, `self_attention`, `face_enhance`) in the
vendor's spellings, checked against the job's kind, the model's family, the size and the scheduler, and turned into
`GenerationPasses`; a combination that cannot run is a field error naming the field, the rule and the value."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Final

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from sdserver.api.fields import is_absent, parse_number
from sdserver.catalog.families import FamilyInfo, ModelFamily
from sdserver.errors import ValidationError
from sdserver.job_params import GenerationPasses, SchedulerChoice
from sdserver.jobs import JobKind

if TYPE_CHECKING:
    from sdserver.api.schemas_generation import ResolvedGeneration, Text2ImgRequest

PASS_FIELDS: Final = ("upscale", "highres_fix", "panorama", "self_attention", "face_enhance")
# `upscale: yes` doubles each side, as the vendor documents; a number is the factor itself.
UPSCALE_YES: Final = 2.0
UPSCALE_RANGE: Final = (1.0, 4.0)
_YES: Final = frozenset({"yes", "y", "true", "t", "on"})
_NO: Final = frozenset({"no", "n", "false", "f", "off"})
# No output side beyond this after upscaling (a 2048-wide SDXL image at 4x would be 8192 wide).
MAX_UPSCALED_SIDE: Final = 4096
# Highres fix draws at half size first; both halves must still be a usable image.
MIN_HIGHRES_SIDE: Final = 128
HIGHRES_FAMILIES: Final = frozenset({ModelFamily.SD15, ModelFamily.SD2, ModelFamily.SDXL})
# Panorama (MultiDiffusion) and self-attention guidance exist as SD 1.x/2.x pipelines only.
VARIANT_FAMILIES: Final = frozenset({ModelFamily.SD15, ModelFamily.SD2})
# Self-attention guidance indexes the noise schedule by timestep: schedulers with integer timesteps only.
SAG_SCHEDULERS: Final = frozenset(
    {
        "DDIMScheduler",
        "DDPMScheduler",
        "DEISMultistepScheduler",
        "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler",
        "LCMScheduler",
        "PNDMScheduler",
        "UniPCMultistepScheduler",
    }
)


def parse_upscale(value: object) -> float | None:
    """A flag (yes: 2x; no, 0: off) or a factor from 1 to 4 (1: off); numbers are factors, words are flags."""
    if is_absent(value):
        return None
    if isinstance(value, bool):
        return UPSCALE_YES if value else 1.0
    word = value.strip().lower() if isinstance(value, str) else ""
    if word in _YES:
        return UPSCALE_YES
    if word in _NO:
        return 1.0
    try:
        number = parse_number(value)
    except PydanticCustomError:
        number = None
    low, high = UPSCALE_RANGE
    if number == 0:
        return 1.0
    if number is None or not low <= number <= high:
        raise PydanticCustomError("upscale", "must be yes/no or a factor from 1 to 4")
    return number


UpscaleValue = Annotated[float | None, BeforeValidator(parse_upscale)]


def resolve_passes(
    request: Text2ImgRequest,
    *,
    kind: JobKind,
    family: FamilyInfo | None,
    size: tuple[int, int],
    scheduler: SchedulerChoice,
    refiner: bool,
) -> GenerationPasses:
    """The passes the request asks for, once each is known to run on this kind, family, size and scheduler
    (`family` None: a model of unknown family, run with SD 1.5 rules)."""
    width, height = size
    scale = request.upscale or 1.0
    if scale > 1 and max(width, height) * scale > MAX_UPSCALED_SIDE:
        rule = f"would make a {round(width * scale)}x{round(height * scale)} image; at most {MAX_UPSCALED_SIDE} a side"
        raise ValidationError.for_field("upscale", rule, request.upscale)
    asked = [name for name in ("highres_fix", "panorama", "self_attention") if getattr(request, name)]
    if len(asked) > 1:
        raise ValidationError.for_field(asked[1], f"cannot be combined with {asked[0]}", "yes")
    if asked:
        _check_variant(asked[0], kind, family, refiner)
    if request.highres_fix and min(width, height) < MIN_HIGHRES_SIDE:
        rule = f"needs width and height of at least {MIN_HIGHRES_SIDE} (the first pass draws at half size)"
        raise ValidationError.for_field("highres_fix", rule, f"{width}x{height}")
    if request.panorama and width <= height:
        raise ValidationError.for_field("panorama", "needs a width greater than the height", f"{width}x{height}")
    if request.self_attention and scheduler.class_name not in SAG_SCHEDULERS:
        rule = f"runs with the schedulers {', '.join(sorted(SAG_SCHEDULERS))}"
        raise ValidationError.for_field("self_attention", rule, scheduler.class_name)
    return GenerationPasses(
        upscale_scale=scale,
        highres_fix=bool(request.highres_fix),
        panorama=bool(request.panorama),
        self_attention=bool(request.self_attention),
        face_enhance=bool(request.face_enhance),
    )


def _check_variant(name: str, kind: JobKind, family: FamilyInfo | None, refiner: bool) -> None:
    families = HIGHRES_FAMILIES if name == "highres_fix" else VARIANT_FAMILIES
    if kind is not JobKind.TEXT2IMG:
        raise ValidationError.for_field(name, "applies to text2img only", f"yes on {kind.value}")
    if family is not None and (family.family not in families or family.inpainting):
        names = ", ".join(sorted(item.value for item in families))
        shown = f"{family.family.value} inpainting" if family.inpainting else family.family.value
        raise ValidationError.for_field(name, f"runs with {names} models (not inpainting ones)", f"yes on {shown}")
    if refiner:
        raise ValidationError.for_field(name, "cannot be combined with refiner", "yes")


def asks_for(request: Text2ImgRequest, name: str) -> bool:
    """Whether the request turns the pass on (`upscale` 1 and `no` leave it off)."""
    value = getattr(request, name)
    if value is None or isinstance(value, bool):
        return bool(value)
    return float(value) > 1


def with_passes(
    resolved: ResolvedGeneration, request: Text2ImgRequest, kind: JobKind, family: FamilyInfo | None
) -> ResolvedGeneration:
    """`resolved` with the passes it asked for in its params, no longer listed in `meta.unsupported`."""
    passes = resolve_passes(
        request,
        kind=kind,
        family=family,
        size=(resolved.width, resolved.height),
        scheduler=resolved.params.scheduler,
        refiner=resolved.params.refiner,
    )
    unsupported = {name: why for name, why in resolved.unsupported.items() if name not in PASS_FIELDS}
    return replace(resolved, params=replace(resolved.params, passes=passes), unsupported=unsupported)
