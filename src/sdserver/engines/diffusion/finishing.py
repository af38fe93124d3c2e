"""Post-processing shared by every diffusion pipeline: the safety screen, then PNG encoding with A1111-style
`parameters` text. `finish_images` is the one entry point (pipelines.py re-exports it)."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdserver.engines.base import JobFailed
from sdserver.errors import JobErrorCode
from sdserver.images import normalize_mode
from sdserver.job_params import SAFETY_CHECKER_TYPES, generation_part
from sdserver.jobs import Job

# The PNG tEXt key A1111, ComfyUI importers and image viewers read generation settings from.
PARAMETERS_KEY: Final = "parameters"
SEED_MASK: Final = (1 << 64) - 1


@dataclass(frozen=True)
class FinishedImages:
    """Encoded PNGs, one per image, and what the reply reports about them (`nsfw_content_detected`...)."""

    images: list[bytes]
    meta: dict[str, Any]


def finish_images(
    images: Sequence[Image.Image],
    job: Job,
    *,
    seed: int,
    sampler: str,
    nsfw_threshold: float,
    extra_parameters: Mapping[str, Any] | None = None,
) -> FinishedImages:
    """Screen the images when the job asks for the safety checker, then encode them as PNG with a `parameters`
    chunk. Image i is labelled with seed `seed + i` (the noise it was drawn from). `extra_parameters` adds
    `Key: value` entries (e.g. "Denoising strength") after the standard ones; None values are left out."""
    meta: dict[str, Any] = {"nsfw_content_detected": False}
    finished = list(images)
    params = generation_part(job.params)
    if params.safety_checker:
        finished, meta = _screen(finished, params.safety_checker_type, nsfw_threshold)
    encoded = [
        encode_png_with_parameters(
            image, generation_parameters(job, (seed + index) & SEED_MASK, sampler, extra_parameters)
        )
        for index, image in enumerate(finished)
    ]
    return FinishedImages(images=encoded, meta=meta)


def _screen(images: list[Image.Image], mode: str, threshold: float) -> tuple[list[Image.Image], dict[str, Any]]:
    if mode not in SAFETY_CHECKER_TYPES:
        types = ", ".join(SAFETY_CHECKER_TYPES)
        raise JobFailed(JobErrorCode.INVALID_PARAMS, f"safety_checker_type must be one of {types}, got {mode!r}")
    # Imported here: the checker loads onnxruntime and its model only for jobs that ask for it.
    from sdserver.safety import screen_images

    screening = screen_images(images, mode, threshold)
    meta = {
        "nsfw_content_detected": any(screening.flagged),
        "nsfw_scores": [round(float(score), 4) for score in screening.scores],
        "safety_checker_type": mode,
    }
    return list(screening.images), meta


def generation_parameters(job: Job, seed: int, sampler: str, extra: Mapping[str, Any] | None = None) -> str:
    """A1111's layout: prompt, `Negative prompt: ...`, then one line of `Key: value` pairs."""
    params = generation_part(job.params)
    lines = [_one_line(params.prompt)]
    if params.negative_prompt:
        lines.append(f"Negative prompt: {_one_line(params.negative_prompt)}")
    fields: dict[str, Any] = {
        "Steps": params.steps,
        "Sampler": sampler,
        "CFG scale": params.guidance_scale,
        "Seed": seed,
        "Size": f"{job.width}x{job.height}",
        "Model": job.model_id,
    }
    fields.update(extra or {})
    lines.append(", ".join(f"{key}: {_value(value)}" for key, value in fields.items() if value is not None))
    return "\n".join(lines)


def encode_png_with_parameters(image: Image.Image, parameters: str) -> bytes:
    """PNG bytes with `parameters` as an iTXt/tEXt chunk (iTXt only when the text is not Latin-1)."""
    info = PngInfo()
    try:
        parameters.encode("latin-1")
        info.add_text(PARAMETERS_KEY, parameters)
    except UnicodeEncodeError:
        info.add_itxt(PARAMETERS_KEY, parameters)
    buffer = io.BytesIO()
    normalize_mode(image).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def _one_line(text: str) -> str:
    # A newline inside the prompt would shift every following line of the block.
    return " ".join(text.splitlines())


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    text = _one_line(str(value))
    # A1111 quotes values that hold its own separators, so parsers still split the line correctly.
    return json.dumps(text, ensure_ascii=False) if "," in text or ":" in text else text
