"""Job rows written before typed params (one flat dict, no version), read into today's types so that an upgrade
neither strands the queued jobs of a data dir nor loses the replies of its finished ones. Rows are never rewritten."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from sdserver.job_params import ControlNetMode, JobParams, JobReply, parse_params
from sdserver.jobs import JobKind

# Flat keys those rows shared with today's fields.
_GENERATION_KEYS: Final = (
    "prompt",
    "negative_prompt",
    "guidance_scale",
    "seed",
    "samples",
    "clip_skip",
    "strength",
    "vae",
    "embeddings",
    "tomesd",
    "safety_checker",
    "safety_checker_type",
    "init_image_key",
    "mask_image_key",
)


def load_legacy_params(kind: JobKind, scheduler: str, data: Mapping[str, Any]) -> tuple[JobParams, JobReply]:
    """The params and reply echo of an unversioned row, as the API of that time wrote it; `scheduler` is the row's
    own column, which held the planned class (its flags were in the params). Raises StoredParamsError."""
    reply = JobReply(
        fetch_prefix=str(data.get("fetch_prefix") or ""),
        meta=dict(data.get("meta") or {}),
        base64=bool(data.get("base64")),
        single_output=bool(data.get("single_output")),
    )
    return parse_params(_typed(kind, scheduler, data)), reply


def _typed(kind: JobKind, scheduler: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """The row's values under today's names, for `parse_params` to check."""
    if kind is JobKind.MODEL_LOAD:
        return {"type": "model_load", **_pick(data, "model_kind", "source_type", "source", "revision")}
    if kind is JobKind.SUPER_RESOLUTION:
        return {"type": "super_resolution", **_pick(data, "input_key", "scale", "face_enhance")}
    generation = {
        **_pick(data, *_GENERATION_KEYS),
        "steps": data.get("num_inference_steps"),
        "scheduler": {
            "class_name": scheduler,
            "use_karras_sigmas": data.get("use_karras_sigmas"),
            "algorithm_type": data.get("algorithm_type"),
        },
        "loras": list(zip(data.get("lora_models") or (), data.get("lora_strengths") or (), strict=False)),
    }
    if kind is not JobKind.CONTROLNET:
        return {"type": "generation", **generation}
    init, control, mask = data.get("init_image_key"), data.get("control_image_key"), data.get("mask_image_key")
    # Those rows left the mode to the engine, which read it from the stored image keys like this.
    mode = ControlNetMode.INPAINT if mask else ControlNetMode.IMG2IMG if init and control else ControlNetMode.TEXT2IMG
    if mode is ControlNetMode.TEXT2IMG:
        generation["init_image_key"] = None
    units = zip(
        data.get("controlnet_model") or (),
        data.get("controlnet_type") or (),
        data.get("controlnet_conditioning_scale") or (),
        strict=False,
    )
    return {
        "type": "controlnet",
        "generation": generation,
        "units": [{"model": model, "hint_type": hint_type, "scale": scale} for model, hint_type, scale in units],
        "control_image_key": control or init,
        "mode": mode.value,
        **_pick(data, "guess_mode", "auto_hint"),
    }


def _pick(data: Mapping[str, Any], *names: str) -> dict[str, Any]:
    return {name: data[name] for name in names if name in data}
