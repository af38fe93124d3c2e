"""Batch keys: which jobs may share one pipeline call or forward pass (same key), decided from their typed params
alone."""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from typing import Any, Final

from sdserver.job_params import ControlNetParams, GenerationParams, JobParams, SuperResolutionParams

# Kinds the diffusion engine runs as one call; inpaint (mask blending) and ControlNet (per-job hints) never batch.
BATCHABLE_KINDS: Final = frozenset({"text2img", "img2img"})
# Settings that shape every step of the forward pass: jobs must agree on all of them to share it.
SHARED_FIELDS: Final = ("steps", "guidance_scale", "scheduler", "clip_skip", "loras", "vae", "embeddings", "tomesd")
# Settings each job keeps for itself inside a batch (its own prompts, noise, sample count and safety screen).
PER_JOB_FIELDS: Final = frozenset(
    {"prompt", "negative_prompt", "seed", "samples", "safety_checker", "safety_checker_type", "init_image_key"}
)
# Schedulers whose noise is drawn per call, not per image (DPM-Solver SDE's Brownian tree): their jobs run alone.
SOLO_SCHEDULERS: Final = frozenset({"DPMSolverSDEScheduler"})
SOLO_PREFIX: Final = "solo:"
# Super-resolution settings each job keeps inside a batch: none changes the network's forward pass. The scale is a
# resize of the network's output and the face pass runs on each job's output after it, so jobs of one model share
# forward passes whatever their values (the signature's input size keeps the tiles of a batch one shape).
UPSCALE_PER_JOB_FIELDS: Final = frozenset({"input_key", "scale", "face_enhance"})
_DEFAULTS: Final = GenerationParams(prompt="")

__all__ = [
    "BATCHABLE_KINDS",
    "PER_JOB_FIELDS",
    "SHARED_FIELDS",
    "SOLO_PREFIX",
    "UPSCALE_PER_JOB_FIELDS",
    "batch_key",
    "is_solo",
]


def batch_key(kind: str, params: JobParams, *, unique: str) -> str:
    """The part of a job's batch signature that comes from its params ('' for params no engine batches by).

    Generation jobs of a batchable kind get a digest of their shared settings; any other field (the refiner, a
    mask, or a field added later) must be at its default, else the job runs alone: `solo:<unique>` (`unique` is
    something no other job has, e.g. its first output key). Upscales keep the plain signature (kind, model, input
    size), which is all their batches share, unless a field added later is set."""
    if isinstance(params, SuperResolutionParams):
        return _upscale_key(params, unique)
    if not isinstance(params, GenerationParams):
        # ControlNet reads per-job hints; test jobs keep the plain signature (their engine loops).
        return _solo(unique) if isinstance(params, ControlNetParams) else ""
    if kind not in BATCHABLE_KINDS or params.scheduler.class_name in SOLO_SCHEDULERS:
        return _solo(unique)
    shared: dict[str, Any] = {name: _plain(getattr(params, name)) for name in SHARED_FIELDS}
    for spec in fields(GenerationParams):
        name = spec.name
        # The strength is shared in img2img (below) and unused by text2img.
        if name in PER_JOB_FIELDS or name in SHARED_FIELDS or name == "strength":
            continue
        if getattr(params, name) != getattr(_DEFAULTS, name):
            return _solo(unique)
    if kind == "img2img":
        # Strength decides which timesteps run.
        shared["strength"] = params.strength
    # SDXL treats a missing negative prompt (zeros) differently from an empty one: the two never mix.
    shared["negative_prompt"] = bool(params.negative_prompt)
    digest = hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:32]
    return f"batch:{digest}"


def _upscale_key(params: SuperResolutionParams, unique: str) -> str:
    for spec in fields(SuperResolutionParams):
        if spec.name not in UPSCALE_PER_JOB_FIELDS and getattr(params, spec.name) != spec.default:
            return _solo(unique)
    return ""


def _solo(unique: str) -> str:
    return SOLO_PREFIX + hashlib.sha256(unique.encode()).hexdigest()[:32]


def is_solo(key: str) -> bool:
    return key.startswith(SOLO_PREFIX)


def _plain(value: Any) -> Any:
    """A JSON-ready form of a param value (tuples and the scheduler choice as lists)."""
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if hasattr(value, "__dataclass_fields__"):
        return [_plain(getattr(value, spec.name)) for spec in fields(value)]
    return value
