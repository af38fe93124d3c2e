"""Scheduler names clients may send (contract section 5, plus A1111 aliases) and what each one supports; torch-free."""

from __future__ import annotations

from typing import Final

from sdserver.catalog.families.capabilities import FLOW_MATCH_SCHEDULERS, model_capabilities
from sdserver.catalog.families.kinds import FamilyInfo
from sdserver.catalog.scheduler_names import (
    EXTRA_SCHEDULER_NAMES,
    NOISE_ONLY_SCHEDULERS,
    SAMPLING_SCHEDULERS,
    SCHEDULER_NAMES,
    UNSUPPORTED_SCHEDULERS,
)
from sdserver.errors import JobErrorCode
from sdserver.job_params import SchedulerChoice

__all__ = [
    "EXTRA_SCHEDULER_NAMES",
    "NOISE_ONLY_SCHEDULERS",
    "SAMPLING_SCHEDULERS",
    "SCHEDULER_NAMES",
    "UNSUPPORTED_SCHEDULERS",
]


# Classes whose config has `use_karras_sigmas` (checked against diffusers 0.42).
KARRAS_SCHEDULERS: Final = frozenset(
    {
        "LMSDiscreteScheduler",
        "EulerDiscreteScheduler",
        "DPMSolverMultistepScheduler",
        "HeunDiscreteScheduler",
        "KDPM2DiscreteScheduler",
        "DPMSolverSinglestepScheduler",
        "KDPM2AncestralDiscreteScheduler",
        "UniPCMultistepScheduler",
        "DEISMultistepScheduler",
        "DPMSolverSDEScheduler",
    }
)
# Algorithm types each class accepts, first one being the class default.
ALGORITHM_TYPES: Final[dict[str, tuple[str, ...]]] = {
    "DPMSolverMultistepScheduler": ("dpmsolver++", "dpmsolver", "sde-dpmsolver++", "sde-dpmsolver"),
    "DPMSolverSinglestepScheduler": ("dpmsolver++", "dpmsolver", "sde-dpmsolver++"),
    "DEISMultistepScheduler": ("deis",),
}
# Spellings clients send for the algorithm types (the vendor documents `dpmsolver+++`).
ALGORITHM_ALIASES: Final = {"dpmsolver+++": "dpmsolver++", "dpm++": "dpmsolver++", "sde-dpm++": "sde-dpmsolver++"}

# A1111 sampler names -> (class, use_karras_sigmas, algorithm_type); the alias decides both flags.
A1111_ALIASES: Final[dict[str, tuple[str, bool, str | None]]] = {
    "Euler": ("EulerDiscreteScheduler", False, None),
    "Euler Karras": ("EulerDiscreteScheduler", True, None),
    "Euler a": ("EulerAncestralDiscreteScheduler", False, None),
    "LMS": ("LMSDiscreteScheduler", False, None),
    "LMS Karras": ("LMSDiscreteScheduler", True, None),
    "Heun": ("HeunDiscreteScheduler", False, None),
    "DPM2": ("KDPM2DiscreteScheduler", False, None),
    "DPM2 Karras": ("KDPM2DiscreteScheduler", True, None),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", False, None),
    "DPM2 a Karras": ("KDPM2AncestralDiscreteScheduler", True, None),
    "DPM++ 2S a": ("DPMSolverSinglestepScheduler", False, "dpmsolver++"),
    "DPM++ 2S a Karras": ("DPMSolverSinglestepScheduler", True, "dpmsolver++"),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", False, "dpmsolver++"),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", True, "dpmsolver++"),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", False, "sde-dpmsolver++"),
    "DPM++ 2M SDE Karras": ("DPMSolverMultistepScheduler", True, "sde-dpmsolver++"),
    "DPM++ SDE": ("DPMSolverSDEScheduler", False, None),
    "DPM++ SDE Karras": ("DPMSolverSDEScheduler", True, None),
    "DDIM": ("DDIMScheduler", False, None),
    "DDPM": ("DDPMScheduler", False, None),
    "PLMS": ("PNDMScheduler", False, None),
    "UniPC": ("UniPCMultistepScheduler", False, None),
    "DEIS": ("DEISMultistepScheduler", False, None),
    "LCM": ("LCMScheduler", False, None),
}
_ALIASES_FOLDED: Final = {name.casefold(): value for name, value in A1111_ALIASES.items()}
_CLASSES_FOLDED: Final = {
    name.casefold(): name for name in (*SCHEDULER_NAMES, *EXTRA_SCHEDULER_NAMES, *sorted(FLOW_MATCH_SCHEDULERS))
}


class SchedulerError(ValueError):
    """A scheduler name that cannot be used; `code` is the job's error code."""

    def __init__(self, code: JobErrorCode, message: str):
        self.code = code
        self.message = message
        super().__init__(message)


def canonical_scheduler(name: str) -> tuple[str, bool | None, str | None] | None:
    """(class name, karras, algorithm) for a class name or an A1111 alias; flags are None unless the alias sets them."""
    text = name.strip().casefold()
    if text in _ALIASES_FOLDED:
        return _ALIASES_FOLDED[text]
    if text in _CLASSES_FOLDED:
        return _CLASSES_FOLDED[text], None, None
    return None


def normalize_algorithm_type(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip().lower()
    if text in {"", "none", "null"}:
        return None
    return ALGORITHM_ALIASES.get(text, text)


def plan_scheduler(
    name: str,
    use_karras_sigmas: bool,
    algorithm_type: str | None,
    *,
    from_image: bool = False,
    family: FamilyInfo | None = None,
) -> SchedulerChoice:
    """The scheduler a job runs with (`from_image`: img2img or inpaint) on a model of `family` (None: unknown, the
    UNet schedulers); raises SchedulerError for names that are unknown, cannot sample this family's models or
    cannot start from an image. The errors name the valid classes."""
    valid = model_capabilities(family).schedulers if family is not None else SAMPLING_SCHEDULERS
    found = canonical_scheduler(name)
    if found is None:
        raise SchedulerError(
            JobErrorCode.UNKNOWN_SCHEDULER, f"scheduler {name!r} is not known; use one of {', '.join(sorted(valid))}"
        )
    class_name, alias_karras, alias_algorithm = found
    if class_name in UNSUPPORTED_SCHEDULERS:
        raise SchedulerError(
            JobErrorCode.UNSUPPORTED_SCHEDULER,
            f"{class_name} cannot sample a Stable Diffusion model; use e.g. DPMSolverMultistepScheduler",
        )
    if family is not None and class_name not in valid:
        raise SchedulerError(
            JobErrorCode.UNSUPPORTED_SCHEDULER,
            f"{class_name} cannot sample {_family_name(family)} models; valid for this family: "
            f"{', '.join(sorted(valid))}",
        )
    if family is None and class_name in FLOW_MATCH_SCHEDULERS:
        raise SchedulerError(
            JobErrorCode.UNSUPPORTED_SCHEDULER,
            f"{class_name} samples SD3 and Flux models only; use one of {', '.join(sorted(valid))}",
        )
    if from_image and class_name in NOISE_ONLY_SCHEDULERS:
        raise SchedulerError(
            JobErrorCode.UNSUPPORTED_SCHEDULER,
            f"{class_name} cannot start from an init image (img2img, inpaint); use e.g. DPMSolverMultistepScheduler",
        )
    karras = use_karras_sigmas if alias_karras is None else alias_karras
    wanted = normalize_algorithm_type(alias_algorithm or algorithm_type)
    allowed = ALGORITHM_TYPES.get(class_name, ())
    # An algorithm the class lacks is not applied; meta then shows the class's own (or none).
    applied = (wanted if wanted in allowed else allowed[0]) if allowed else None
    return SchedulerChoice(class_name, karras and class_name in KARRAS_SCHEDULERS, applied)


def _family_name(family: FamilyInfo) -> str:
    return f"{family.family.value} ({family.few_step.value})" if family.few_step else family.family.value
