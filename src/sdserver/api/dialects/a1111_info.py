"""A1111's text about images: the `info` JSON of a generation reply and the PNG `parameters` text, read back."""

from __future__ import annotations

import io
import json
import re
from typing import Any

from PIL import Image

from sdserver import __version__
from sdserver.jobs import Job

PARAMETERS_KEY = "parameters"
_NEGATIVE = "Negative prompt:"
# `Key: value` pairs of the last line; a value holding `,` or `:` is JSON-quoted.
_PAIR = re.compile(r'\s*([\w .\-/]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def png_text(data: bytes) -> dict[str, str]:
    """The text chunks of a PNG (tEXt, iTXt, zTXt); nothing for other images."""
    with Image.open(io.BytesIO(data)) as image:
        text = getattr(image, "text", None) or {}
        return {str(key): str(value) for key, value in text.items()}


def parse_parameters(text: str) -> dict[str, Any]:
    """A1111's `parameters` text as fields: Prompt, Negative prompt, then each `Key: value` of the last line."""
    lines = text.strip().split("\n")
    pairs: dict[str, Any] = {}
    if len(lines) > 1 or (lines and _PAIR.match(lines[-1]) and "Steps:" in lines[-1]):
        last = lines.pop()
        for key, value in _PAIR.findall(last):
            pairs[key.strip()] = json.loads(value) if value.startswith('"') else value.strip()
    prompt = [line for line in lines if not line.startswith(_NEGATIVE)]
    negative = [line[len(_NEGATIVE) :].strip() for line in lines if line.startswith(_NEGATIVE)]
    return {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative), **pairs}


def generation_info(job: Job, meta: dict[str, Any], infotexts: list[str], sampler: str) -> dict[str, Any]:
    """The `info` object of a txt2img or img2img reply, from the job as it ran."""
    count = max(len(job.output_keys), 1)
    seed = int(meta.get("seed") or 0)
    prompt = str(meta.get("prompt") or "")
    negative = str(meta.get("negative_prompt") or "")
    return {
        "prompt": prompt,
        "all_prompts": [prompt] * count,
        "negative_prompt": negative,
        "all_negative_prompts": [negative] * count,
        "seed": seed,
        "all_seeds": [seed + index for index in range(count)],
        "subseed": -1,
        "all_subseeds": [-1] * count,
        "subseed_strength": 0,
        "width": job.width,
        "height": job.height,
        "sampler_name": sampler,
        "cfg_scale": meta.get("guidance_scale"),
        "steps": meta.get("steps"),
        "batch_size": count,
        "restore_faces": meta.get("face_enhance") == "yes",
        "face_restoration_model": meta.get("face_restorer"),
        "sd_model_name": job.model_id,
        "sd_model_hash": None,
        "sd_vae_name": meta.get("vae"),
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": meta.get("strength"),
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": job.created_at.strftime("%Y%m%d%H%M%S"),
        "clip_skip": meta.get("clip_skip") or 1,
        "is_using_inpainting_conditioning": False,
        "version": f"sdserver {__version__}",
        "interrupted": job.status.value == "cancelled",
        "job_id": job.id,
    }
