"""Builds a fresh diffusers scheduler for each job from the model's own scheduler config and the job's choice,
after checking that the model's family can sample with it."""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any

import diffusers

from sdserver.catalog.families.capabilities import FLOW_MATCH_SCHEDULERS, FamilyCapabilities
from sdserver.catalog.schedulers import KARRAS_SCHEDULERS
from sdserver.engines.base import JobFailed
from sdserver.errors import JobErrorCode
from sdserver.job_params import SchedulerChoice

# DPM-Solver's first-order variants cannot end on sigma 0 (diffusers refuses `final_sigmas_type="zero"` for them).
_NEEDS_SIGMA_MIN_END = frozenset({"dpmsolver", "sde-dpmsolver"})


def family_scheduler(choice: SchedulerChoice, capabilities: FamilyCapabilities) -> SchedulerChoice:
    """The choice as the model's family runs it; JobFailed(UNSUPPORTED_SCHEDULER) naming the valid schedulers when
    the family cannot sample with it (the API refuses these at submit; a job stored before that still fails here)."""
    problem = capabilities.scheduler_error(choice.class_name)
    if problem is not None:
        raise JobFailed(JobErrorCode.UNSUPPORTED_SCHEDULER, problem)
    if choice.class_name in FLOW_MATCH_SCHEDULERS and choice.use_karras_sigmas:
        # Flow models keep their own (shifted) sigma schedule; meta then reports karras as not used.
        return replace(choice, use_karras_sigmas=False)
    return choice


def scheduler_overrides(choice: SchedulerChoice, seed: int) -> dict[str, Any]:
    """Config keys that differ from the model's scheduler config for this choice."""
    overrides: dict[str, Any] = {}
    if choice.use_karras_sigmas:
        overrides["use_karras_sigmas"] = True
    elif choice.class_name in KARRAS_SCHEDULERS:
        # The model's own config may have karras on; the job said no (or the alias implies none).
        overrides["use_karras_sigmas"] = False
    if choice.algorithm_type is not None:
        overrides["algorithm_type"] = choice.algorithm_type
        if choice.algorithm_type in _NEEDS_SIGMA_MIN_END:
            overrides["final_sigmas_type"] = "sigma_min"
    if choice.class_name == "DPMSolverSDEScheduler":
        # Its Brownian-tree noise otherwise draws a seed from the global RNG: fix it so results reproduce.
        overrides["noise_sampler_seed"] = seed
    return overrides


def build_scheduler(choice: SchedulerChoice, base_config: Any, seed: int) -> Any:
    """A new scheduler instance (schedulers hold per-run state, so one is never shared between jobs)."""
    cls = getattr(diffusers, choice.class_name)
    # Only keys this class takes: the rest (PNDM's `skip_prk_steps` for Euler...) would log a warning per job.
    accepted = inspect.signature(cls.__init__).parameters
    config = {key: value for key, value in dict(base_config).items() if key in accepted}
    return cls.from_config(config, **scheduler_overrides(choice, seed))
