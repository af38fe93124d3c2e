"""Request schemas of the generation endpoints (text2img, img2img, inpaint) and the rules that turn them into job
params: sizes, steps, scheduler, add-ons (LoRA, VAE, embeddings), safety checker and the accepted-but-unsupported
vendor flags."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from pydantic import AliasChoices, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from sdserver.api.fields import Flag, LenientFloat, LenientInt, OptionalText, RequiredText, is_absent
from sdserver.api.schemas import LenientRequest
from sdserver.api.schemas_family import FamilyPlan, fields_not_applying, guidance_for, plan_family, side_for
from sdserver.api.schemas_passes import UpscaleValue, asks_for
from sdserver.catalog.families import FamilyInfo
from sdserver.catalog.families.capabilities import (
    CLIP_SKIP,
    EMBEDDINGS,
    GUIDANCE,
    LORA,
    NEGATIVE_PROMPT,
    REFINER,
    TOMESD,
)
from sdserver.catalog.ids import is_valid_model_id
from sdserver.catalog.schedulers import SchedulerError, plan_scheduler
from sdserver.errors import ValidationError
from sdserver.job_params import (
    DEFAULT_KARRAS_SIGMAS,
    DEFAULT_SAFETY_CHECKER,
    DEFAULT_SAMPLES,
    DEFAULT_STRENGTH,
    DEFAULT_TOMESD,
    SAFETY_CHECKER_TYPES,
    GenerationParams,
    SchedulerChoice,
)

MAX_SAMPLES = 4
MAX_STEPS = 50
SEED_LIMIT = 2**32
MAX_LORAS = 5
MAX_EMBEDDINGS = 8
LORA_STRENGTH_RANGE = (-4.0, 4.0)
# Vendor flags this server accepts so clients keep working, but does not implement; `meta.unsupported` says so.
# The generation routes run the four passes (api/schemas_passes.py) and drop them from this list; ControlNet does not.
UNSUPPORTED_FLAGS: Final = {
    "upscale": "not run on ControlNet jobs; call super_resolution on the output",
    "panorama": "not run on ControlNet jobs (text2img runs it)",
    "self_attention": "not run on ControlNet jobs (text2img runs it)",
    "multi_lingual": "prompt translation is not supported by this server; send English prompts",
    "highres_fix": "not run on ControlNet jobs (text2img runs it)",
    "face_enhance": "not run on ControlNet jobs (text2img, img2img and inpaint run it)",
}


def _parse_track_id(value: object) -> str | int | None:
    """Echoed unchanged, string or integer, as the client sent it."""
    if is_absent(value):
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        return str(value)
    return value


TrackId = Annotated[str | int | None, BeforeValidator(_parse_track_id)]


def _parse_comma_list(value: object) -> tuple[str, ...] | None:
    """`"a, b"`, `["a", "b"]` or one number: items trimmed, empty items dropped; absent when nothing is left."""
    if is_absent(value):
        return None
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list | tuple):
        items = [item for item in value if not is_absent(item)]
    elif isinstance(value, int | float) and not isinstance(value, bool):
        items = [str(value)]
    else:
        raise PydanticCustomError("text", "must be a string")
    if not all(isinstance(item, str | int | float) and not isinstance(item, bool) for item in items):
        raise PydanticCustomError("text", "must be a string")
    cleaned = tuple(text for text in (str(item).strip() for item in items) if text)
    return cleaned or None


CommaList = Annotated[tuple[str, ...] | None, BeforeValidator(_parse_comma_list)]


class JobRequest(LenientRequest):
    """Fields every job-making endpoint shares."""

    webhook: OptionalText = Field(default=None, description="URL that receives the result when the job ends.")
    track_id: TrackId = Field(default=None, description="Echoed unchanged in the webhook.")
    instant_response: Flag = Field(default=None, description="yes: answer `processing` at once, never wait.")
    base64: Flag = Field(default=None, description="yes: `output` holds base64 PNG strings instead of URLs.")
    temp: Flag = Field(default=None, description="yes: output links expire after 24 hours.")


class Text2ImgRequest(JobRequest):
    prompt: RequiredText = Field(description="What to draw.")
    negative_prompt: OptionalText = Field(default=None, description="What to avoid.")
    model_id: OptionalText = Field(default=None, description="A loaded model id.")
    width: LenientInt = Field(
        default=None,
        description="Output width from 64 to the model family's cap (SD 1.x/2.x 1024; SDXL, SD3, Flux 2048), rounded "
        "down to a multiple of 8 (SD3, Flux: 16); default per family (SD 1.x 512, SD 2.x 768, SDXL, SD3, Flux 1024).",
    )
    height: LenientInt = Field(default=None, description="Output height; the same rules and defaults as width.")
    samples: LenientInt = Field(default=None, description="Images to make, 1–4.")
    num_inference_steps: LenientInt = Field(
        default=None,
        validation_alias=AliasChoices("num_inference_steps", "steps"),
        description="Denoising steps, 1–50 (more is capped; alias steps).",
    )
    guidance_scale: LenientFloat = Field(
        default=None,
        description="Prompt guidance; range and default per model family (SD 1.x 1–30, default 7.5; Flux 0–30, "
        "default 3.5; LCM models 0–2, higher is capped). Models of unknown family: 1–20.",
    )
    seed: LenientInt = Field(default=None, description="Seed; empty for a random one (the used seed is returned).")
    scheduler: OptionalText = Field(default=None, description="Scheduler class name or A1111 name.")
    use_karras_sigmas: Flag = Field(default=None, description="Karras sigmas where the scheduler supports them.")
    algorithm_type: OptionalText = Field(default=None, description="DPM-Solver algorithm (e.g. dpmsolver++).")
    clip_skip: LenientInt = Field(default=None, description="CLIP layers to skip, 1–8 (A1111 counting).")
    lora_model: CommaList = Field(default=None, description="LoRA ids, comma separated (loaded with load_model).")
    lora_strength: CommaList = Field(default=None, description="One strength, or one per LoRA (default 1.0).")
    vae: OptionalText = Field(default=None, description="A loaded VAE id used instead of the model's own.")
    embeddings_model: CommaList = Field(
        default=None,
        validation_alias=AliasChoices("embeddings_model", "embeddings"),
        description="Textual-inversion embedding ids; each is used in the prompt by its id (alias embeddings).",
    )
    tomesd: Flag = Field(default=None, description="Token merging for speed (default yes).")
    enhance_prompt: Flag = Field(default=None, description="Append the server's prompt enhancer (default yes).")
    safety_checker: Flag = Field(default=None, description="Screen outputs for NSFW content (default yes).")
    safety_checker_type: OptionalText = Field(
        default=None, description="What to do with flagged images: sensitive_content_text, blur, pixelate, black."
    )
    upscale: UpscaleValue = Field(
        default=None, description="yes (2x) or a factor 1–4: Real-ESRGAN upscales the outputs (docs/generation.md)."
    )
    panorama: Flag = Field(default=None, description="SD 1.x/2.x text2img: MultiDiffusion panorama (width > height).")
    self_attention: Flag = Field(default=None, description="SD 1.x/2.x text2img: self-attention guidance (SAG).")
    face_enhance: Flag = Field(
        default=None, description="Restore the faces in the outputs with GFPGAN/CodeFormer (docs/face-enhance.md)."
    )
    multi_lingual: Flag = Field(default=None, description="Accepted, not supported (see meta.unsupported).")
    highres_fix: Flag = Field(
        default=None, description="text2img: draw at half size, upscale the latents, refine at full size."
    )
    loadbalancer: Flag = Field(default=None, description="Accepted; the job queue already spreads work.")
    refiner: Flag = Field(default=None, description="SDXL: finish the image on the installed SDXL refiner.")


class Img2ImgRequest(Text2ImgRequest):
    init_image: RequiredText = Field(description="Start image: URL, data URL, base64, or a URL this server issued.")
    strength: LenientFloat = Field(
        default=None,
        validation_alias=AliasChoices("strength", "prompt_strength"),
        description="How much to change the start image, 0–1 (default 0.7; alias prompt_strength).",
    )


class InpaintRequest(Img2ImgRequest):
    mask_image: RequiredText = Field(description="Mask: white is repainted, black is kept.")


@dataclass(frozen=True)
class ResolvedGeneration:
    """A validated, defaulted generation request: the params the worker runs (the route adds the input image keys),
    the job's model and size, and what only the replies echo."""

    params: GenerationParams
    model_id: str
    width: int
    height: int
    # img2img or inpaint: `strength` applies.
    from_image: bool
    enhance_prompt: bool
    unsupported: dict[str, str]
    webhook: str | None
    track_id: str | int | None
    instant_response: bool
    base64: bool
    temp: bool

    def meta(self) -> dict[str, Any]:
        params, scheduler = self.params, self.params.scheduler
        return {
            "prompt": params.prompt,
            "negative_prompt": params.negative_prompt,
            "model_id": self.model_id,
            "scheduler": scheduler.class_name,
            "W": self.width,
            "H": self.height,
            "guidance_scale": params.guidance_scale,
            "steps": params.steps,
            "n_samples": params.samples,
            "seed": params.seed,
            "use_karras_sigmas": "yes" if scheduler.use_karras_sigmas else "no",
            "algorithm_type": scheduler.algorithm_type,
            "clip_skip": params.clip_skip,
            "strength": params.strength if self.from_image else None,
            "safetychecker": "yes" if params.safety_checker else "no",
            "safety_checker_type": params.safety_checker_type,
            "lora": ",".join(lora for lora, _ in params.loras) or None,
            "lora_strength": ",".join(f"{strength:g}" for _, strength in params.loras) or None,
            "vae": params.vae,
            "embeddings": ",".join(params.embeddings) or None,
            "tomesd": "yes" if params.tomesd else "no",
            "enhance_prompt": "yes" if self.enhance_prompt else "no",
            "upscale": f"{params.passes.upscale_scale:g}" if params.passes.upscale_scale > 1 else "no",
            **{
                name: "yes"
                for name in ("highres_fix", "panorama", "self_attention", "face_enhance")
                if getattr(params.passes, name)
            },
            **({"unsupported": dict(self.unsupported)} if self.unsupported else {}),
            "temp": "yes" if self.temp else "no",
            "base64": "yes" if self.base64 else "no",
        }


def resolve_generation(
    request: Text2ImgRequest,
    *,
    model_id: str,
    enhance_suffix: str = "",
    from_image: bool | None = None,
    family: FamilyInfo | None = None,
) -> ResolvedGeneration:
    """Defaults, ranges and caps for every generation kind, per the model's family (None: unknown, today's SD 1.5
    rules); the scheduler is planned here, once (`from_image`: whether the job starts from an image; by default,
    whether the request is img2img or inpaint). Fields the family ignores are dropped from the params and listed in
    `meta.unsupported`. Add-on ids are checked for form here; whether they are loaded, by the route (api/addons.py)."""
    from_image = isinstance(request, Img2ImgRequest) if from_image is None else from_image
    plan = plan_family(family)
    scheduler = _scheduler(request, plan, from_image=from_image, family=family)
    enhance = request.enhance_prompt is not False
    ignored = fields_not_applying(plan, request)
    # Checked in this order: the first broken rule is the one reported.
    width, height = side_for("width", request.width, plan), side_for("height", request.height, plan)
    samples = _in_range("samples", request.samples, DEFAULT_SAMPLES, 1, MAX_SAMPLES)
    guidance, capped = guidance_for(request.guidance_scale, plan, ignored=GUIDANCE in ignored)
    if capped:
        ignored["guidance_scale"] = f"capped at {guidance:g}{plan.for_model()}; meta.guidance_scale is the value used"
    params = GenerationParams(
        prompt=_enhanced(request.prompt, enhance_suffix) if enhance else request.prompt,
        negative_prompt="" if NEGATIVE_PROMPT in ignored else request.negative_prompt or "",
        # Above the maximum is capped, not refused; meta.steps shows the value used.
        steps=min(
            _in_range("num_inference_steps", request.num_inference_steps, plan.default_steps, 1, None), MAX_STEPS
        ),
        guidance_scale=guidance,
        seed=_seed(request.seed),
        samples=samples,
        scheduler=scheduler,
        clip_skip=(
            _in_range("clip_skip", request.clip_skip, 1, 1, 8)
            if request.clip_skip is not None and CLIP_SKIP not in ignored
            else None
        ),
        strength=(
            _float_in_range("strength", request.strength, DEFAULT_STRENGTH, 0.0, 1.0)
            if isinstance(request, Img2ImgRequest)
            else DEFAULT_STRENGTH
        ),
        loras=() if LORA in ignored else _loras(request.lora_model, request.lora_strength),
        vae=_addon_ids("vae", (request.vae,) if request.vae else None, 1)[0] if request.vae else None,
        embeddings=(
            () if EMBEDDINGS in ignored else _addon_ids("embeddings_model", request.embeddings_model, MAX_EMBEDDINGS)
        ),
        tomesd=(DEFAULT_TOMESD if request.tomesd is None else request.tomesd) and TOMESD not in plan.unsupported_fields,
        safety_checker=DEFAULT_SAFETY_CHECKER if request.safety_checker is None else request.safety_checker,
        safety_checker_type=_safety_type(request.safety_checker_type),
        refiner=bool(request.refiner) and REFINER not in plan.unsupported_fields,
    )
    return ResolvedGeneration(
        params=params,
        model_id=model_id,
        width=width,
        height=height,
        from_image=from_image,
        enhance_prompt=enhance,
        unsupported={name: why for name, why in UNSUPPORTED_FLAGS.items() if asks_for(request, name)} | ignored,
        webhook=check_webhook(request.webhook),
        track_id=request.track_id,
        instant_response=bool(request.instant_response),
        base64=bool(request.base64),
        temp=bool(request.temp),
    )


def _enhanced(prompt: str, suffix: str) -> str:
    if not suffix.strip() or prompt.rstrip().endswith(suffix.strip()):
        return prompt
    return prompt.rstrip() + suffix


def _addon_ids(field: str, ids: tuple[str, ...] | None, limit: int) -> tuple[str, ...]:
    if not ids:
        return ()
    if len(ids) > limit:
        raise ValidationError.for_field(field, f"at most {limit} ids", ",".join(ids))
    for addon_id in ids:
        if not is_valid_model_id(addon_id):
            raise ValidationError.for_field(field, "must be a model id (letters, digits, - _ .)", addon_id)
    if len(set(ids)) != len(ids):
        raise ValidationError.for_field(field, "must not repeat an id", ",".join(ids))
    return ids


def _loras(models: tuple[str, ...] | None, strengths: tuple[str, ...] | None) -> tuple[tuple[str, float], ...]:
    ids = _addon_ids("lora_model", models, MAX_LORAS)
    if not ids:
        return ()
    values = [_lora_strength(text) for text in strengths or ()]
    if not values:
        values = [1.0] * len(ids)
    elif len(values) == 1:
        # One number applies to every LoRA, as the vendor's single-LoRA examples send it.
        values = values * len(ids)
    elif len(values) != len(ids):
        rule = f"must be one number or one per LoRA ({len(ids)})"
        raise ValidationError.for_field("lora_strength", rule, ",".join(strengths or ()))
    return tuple(zip(ids, values, strict=True))


def _lora_strength(text: str) -> float:
    low, high = LORA_STRENGTH_RANGE
    try:
        value = float(text)
    except ValueError:
        raise ValidationError.for_field("lora_strength", "must be a number or a comma list of numbers", text) from None
    if not low <= value <= high:
        raise ValidationError.for_field("lora_strength", f"must be between {low:g} and {high:g}", text)
    return value


def _safety_type(value: str | None) -> str:
    if value is None:
        return SAFETY_CHECKER_TYPES[0]
    mode = value.strip().lower()
    if mode not in SAFETY_CHECKER_TYPES:
        raise ValidationError.for_field(
            "safety_checker_type", f"must be one of {', '.join(SAFETY_CHECKER_TYPES)}", value
        )
    return mode


def _in_range(field: str, value: int | None, default: int, low: int, high: int | None) -> int:
    if value is None:
        return default
    if value < low:
        raise ValidationError.for_field(field, f"must be at least {low}", value)
    if high is not None and value > high:
        raise ValidationError.for_field(field, f"must be at most {high}", value)
    return value


def _float_in_range(field: str, value: float | None, default: float, low: float, high: float) -> float:
    if value is None:
        return default
    if not low <= value <= high:
        raise ValidationError.for_field(field, f"must be between {low:g} and {high:g}", value)
    return value


def _seed(value: int | None) -> int:
    if value is None or value == -1:
        return secrets.randbelow(SEED_LIMIT)
    if not 0 <= value < SEED_LIMIT:
        raise ValidationError.for_field("seed", f"must be between 0 and {SEED_LIMIT - 1}", value)
    return value


def check_webhook(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError.for_field("webhook", "must be an http(s) URL", value)
    return value


def _scheduler(
    request: Text2ImgRequest, plan: FamilyPlan, *, from_image: bool, family: FamilyInfo | None
) -> SchedulerChoice:
    name = request.scheduler or plan.default_scheduler
    karras = DEFAULT_KARRAS_SIGMAS if request.use_karras_sigmas is None else request.use_karras_sigmas
    try:
        return plan_scheduler(name, karras, request.algorithm_type, from_image=from_image, family=family)
    except SchedulerError as exc:
        rule = f"{exc.message}, got {name!r}"
        raise ValidationError(f"scheduler: {rule}", field_errors={"scheduler": [rule]}) from None
