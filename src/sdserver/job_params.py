"""Typed job parameters: one frozen dataclass per job kind (what the API hands a worker, every default declared here
once), the reply echo kept apart from them (`JobReply`), and their versioned JSON form in the job row."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, TypeAlias

from pydantic import TypeAdapter

# Bumped when a stored field changes meaning; rows of another version are refused, never guessed at (rows from
# before versions existed are read by jobstore/legacy_params.py).
PARAMS_VERSION: Final = 1

# Defaults: the API fills these in for fields a request leaves out; nothing downstream declares its own.
DEFAULT_STEPS: Final = 20
DEFAULT_GUIDANCE_SCALE: Final = 7.5
DEFAULT_SAMPLES: Final = 1
DEFAULT_STRENGTH: Final = 0.7
DEFAULT_SCHEDULER_NAME: Final = "UniPCMultistepScheduler"
DEFAULT_KARRAS_SIGMAS: Final = True
DEFAULT_TOMESD: Final = True
DEFAULT_SAFETY_CHECKER: Final = True
# What a flagged image becomes; the first is the default.
SAFETY_CHECKER_TYPES: Final = ("sensitive_content_text", "blur", "pixelate", "black")
DEFAULT_CONDITIONING_SCALE: Final = 1.0
DEFAULT_UPSCALE_SCALE: Final = 4.0
# The Real-ESRGAN model the `upscale` generation pass runs (catalog.ids.DEFAULT_UPSCALER, the endpoint's default).
DEFAULT_GENERATION_UPSCALER: Final = "realesr-general-x4v3"
# The test engine's: few steps, and test-slow's pause per step.
FAKE_DEFAULT_STEPS: Final = 4
FAKE_DEFAULT_STEP_DELAY_S: Final = 0.2


@dataclass(frozen=True)
class SchedulerChoice:
    """What will actually run: the class and the flags that apply to it (planned once, by the API)."""

    class_name: str
    use_karras_sigmas: bool
    algorithm_type: str | None


# What `plan_scheduler` makes of the default name with the default flags (a test keeps the two equal).
DEFAULT_SCHEDULER: Final = SchedulerChoice(DEFAULT_SCHEDULER_NAME, DEFAULT_KARRAS_SIGMAS, None)


@dataclass(frozen=True)
class GenerationPasses:
    """Extra passes of a generation job (all off by default): `upscale_scale` > 1 runs the Real-ESRGAN model
    `upscale_model` on the outputs; `highres_fix` generates at half size, upscales the latents and refines them at
    the job's size; `panorama` runs MultiDiffusion; `self_attention` runs self-attention guidance (SAG);
    `keep_box` (outpaint) keeps part of the init image exactly; `face_enhance` restores the faces in the outputs
    (the super-resolution engine's restorer, before any upscale)."""

    upscale_scale: float = 1.0
    upscale_model: str = DEFAULT_GENERATION_UPSCALER
    highres_fix: bool = False
    panorama: bool = False
    self_attention: bool = False
    face_enhance: bool = False
    # Inpainting (outpaint): the init image's pixels inside this (left, top, right, bottom) box are put back
    # exactly after the run, so the original area of an extended canvas is unchanged.
    keep_box: tuple[int, int, int, int] | None = None

    @property
    def any(self) -> bool:
        return self.upscale_scale > 1 or self.highres_fix or self.panorama or self.self_attention or self.face_enhance


@dataclass(frozen=True)
class GenerationParams:
    """text2img, img2img and inpaint, and the generation part of a ControlNet job. `seed` None: the engine derives
    one from the job id (the API always sets one)."""

    prompt: str
    negative_prompt: str = ""
    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    seed: int | None = None
    samples: int = DEFAULT_SAMPLES
    scheduler: SchedulerChoice = DEFAULT_SCHEDULER
    # A1111 counting (1 = last layer); None leaves the text encoder alone.
    clip_skip: int | None = None
    # Used when the job starts from an image (img2img, inpaint, ControlNet img2img/inpaint).
    strength: float = DEFAULT_STRENGTH
    loras: tuple[tuple[str, float], ...] = ()
    vae: str | None = None
    embeddings: tuple[str, ...] = ()
    tomesd: bool = DEFAULT_TOMESD
    safety_checker: bool = DEFAULT_SAFETY_CHECKER
    safety_checker_type: str = SAFETY_CHECKER_TYPES[0]
    # Object keys of the stored input images.
    init_image_key: str | None = None
    mask_image_key: str | None = None
    # SDXL: run the last part of the denoising on the installed refiner (ignored by other families).
    refiner: bool = False
    passes: GenerationPasses = field(default_factory=GenerationPasses)


class ControlNetMode(StrEnum):
    """What a ControlNet job does with its images: decided by the API from the images the request gave."""

    TEXT2IMG = "text2img"
    IMG2IMG = "img2img"
    INPAINT = "inpaint"


@dataclass(frozen=True)
class ControlNetUnit:
    """One ControlNet: its id, what it reads (canny, depth...; None when unknown) and its weight."""

    model: str
    hint_type: str | None = None
    scale: float = DEFAULT_CONDITIONING_SCALE


@dataclass(frozen=True)
class ControlNetParams:
    """A ControlNet job: the generation settings (with init and mask keys in img2img and inpaint mode), one unit per
    ControlNet, and the picture the hints come from (the control image, else the init image)."""

    generation: GenerationParams
    units: tuple[ControlNetUnit, ...]
    control_image_key: str
    mode: ControlNetMode = ControlNetMode.TEXT2IMG
    guess_mode: bool = False
    auto_hint: bool = False

    def __post_init__(self) -> None:
        if not self.units:
            raise ValueError("a ControlNet job needs at least one ControlNet")


@dataclass(frozen=True)
class SuperResolutionParams:
    input_key: str
    scale: float = DEFAULT_UPSCALE_SCALE
    face_enhance: bool = False


@dataclass(frozen=True)
class ModelLoadParams:
    """Where a model's bytes come from: `model_kind` is a catalog ModelKind value, `source_type` one of the
    catalog's SOURCE_* (url, hub, local)."""

    model_kind: str
    source_type: str
    source: str
    revision: str | None = None


@dataclass(frozen=True)
class FakeParams:
    """Jobs that tests hand the deterministic test engine directly (through the API, a test model gets the kind's
    own params)."""

    prompt: str = ""
    steps: int = FAKE_DEFAULT_STEPS
    seed: int | None = None
    step_delay_s: float = FAKE_DEFAULT_STEP_DELAY_S


JobParams: TypeAlias = GenerationParams | ControlNetParams | SuperResolutionParams | ModelLoadParams | FakeParams

_TYPE_NAMES: Final[dict[type[Any], str]] = {
    GenerationParams: "generation",
    ControlNetParams: "controlnet",
    SuperResolutionParams: "super_resolution",
    ModelLoadParams: "model_load",
    FakeParams: "test",
}
_TYPES: Final = {name: cls for cls, name in _TYPE_NAMES.items()}


@dataclass(frozen=True)
class JobReply:
    """What only the replies read, never an engine: the path family `fetch` links use (empty: the default one),
    the request echo in `meta`, and the form of `output` (base64 strings; one string instead of a list)."""

    fetch_prefix: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    base64: bool = False
    single_output: bool = False


class StoredParamsError(ValueError):
    """A job row whose params cannot be read back (another version, an unknown type, a malformed field)."""


def generation_part(params: JobParams) -> GenerationParams:
    """The generation settings of a generation or ControlNet job."""
    if isinstance(params, ControlNetParams):
        return params.generation
    if isinstance(params, GenerationParams):
        return params
    raise TypeError(f"{type(params).__name__} has no generation settings")


def dump_params(params: JobParams) -> dict[str, Any]:
    """The params as JSON-ready data, tagged with their type."""
    return {"type": _TYPE_NAMES[type(params)], **_adapter(type(params)).dump_python(params, mode="json")}


def parse_params(data: Mapping[str, Any]) -> JobParams:
    """`dump_params` read back; raises StoredParamsError for data it did not make."""
    values = dict(data)
    cls = _TYPES.get(values.pop("type", None))
    if cls is None:
        raise StoredParamsError(f"unknown params type {data.get('type')!r}")
    try:
        parsed: JobParams = _adapter(cls).validate_python(values, strict=False)
    except ValueError as exc:
        raise StoredParamsError(f"stored {data.get('type')} params do not fit: {exc}") from exc
    return parsed


def dump_job_params(params: JobParams, reply: JobReply) -> dict[str, Any]:
    """What the job row's `params` column holds: the version, the typed params and the reply echo."""
    return {
        "version": PARAMS_VERSION,
        "params": dump_params(params),
        "reply": _adapter(JobReply).dump_python(reply, mode="json"),
    }


def load_job_params(data: Mapping[str, Any]) -> tuple[JobParams, JobReply]:
    version = data.get("version")
    if version != PARAMS_VERSION:
        raise StoredParamsError(f"stored params have version {version!r}, this build reads {PARAMS_VERSION}")
    try:
        reply: JobReply = _adapter(JobReply).validate_python(data.get("reply", {}))
    except ValueError as exc:
        raise StoredParamsError(f"stored reply echo does not fit: {exc}") from exc
    return parse_params(data.get("params", {})), reply


_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}


def _adapter(cls: type[Any]) -> TypeAdapter[Any]:
    # Built on first use (a few milliseconds each); pydantic checks the stored JSON against the dataclass fields.
    adapter = _ADAPTERS.get(cls)
    if adapter is None:
        adapter = _ADAPTERS[cls] = TypeAdapter(cls)
    return adapter
