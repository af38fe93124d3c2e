"""The scheduler names clients may send (contract section 5, plus A1111's DPM++ SDE) and which of them sample a
Stable Diffusion model: the one table both the scheduler planner and the family capabilities read."""

from __future__ import annotations

from typing import Final

# The 18 diffusers class names of the contract, in its order.
SCHEDULER_NAMES: Final = (
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "UniPCMultistepScheduler",
    "DDIMInverseScheduler",
    "DEISMultistepScheduler",
    "IPNDMScheduler",
    "KarrasVeScheduler",
    "ScoreSdeVeScheduler",
    "LCMScheduler",
)
# Listed by the contract but unable to sample a Stable Diffusion model: refused, never silently swapped.
UNSUPPORTED_SCHEDULERS: Final = frozenset({"KarrasVeScheduler", "ScoreSdeVeScheduler", "DDIMInverseScheduler"})
# Samples from noise only: it has no `add_noise`, so it cannot start from an init image (img2img, inpaint).
NOISE_ONLY_SCHEDULERS: Final = frozenset({"IPNDMScheduler"})
# Reachable through the A1111 "DPM++ SDE" aliases only (k-diffusion's sampler; needs torchsde).
EXTRA_SCHEDULER_NAMES: Final = frozenset({"DPMSolverSDEScheduler"})
SAMPLING_SCHEDULERS: Final = frozenset(SCHEDULER_NAMES) - UNSUPPORTED_SCHEDULERS | EXTRA_SCHEDULER_NAMES
