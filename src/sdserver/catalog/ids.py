"""Model ids the server knows without loading anything (safe to import from the API: no torch)."""

from __future__ import annotations

import re

# The Real-ESRGAN weights the vendor serves, by the ids its clients send.
DEFAULT_UPSCALER = "realesr-general-x4v3"
UPSCALER_MODELS: tuple[str, ...] = (
    "realesr-general-x4v3",
    "RealESRGAN_x4plus",
    "RealESRNet_x4plus",
    "RealESRGAN_x4plus_anime_6B",
    "RealESRGAN_x2plus",
)
# The official SDK's default model id for super resolution.
UPSCALER_ALIASES: dict[str, str] = {"ultra_resolution": DEFAULT_UPSCALER}

# Model ids become file and folder names under the data dir, so they are held to a strict shape: letters,
# digits, dot, underscore and dash, starting with a letter or digit (".", ".." and hidden names are out).
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def is_valid_model_id(model_id: str) -> bool:
    """True when the id may name a file: the only check a client string passes before it touches a path."""
    return _MODEL_ID.fullmatch(model_id) is not None and ".." not in model_id


def resolve_upscaler_id(model_id: str | None) -> str:
    """The upscaler a request means: the default when none is given, aliases resolved."""
    if not model_id:
        return DEFAULT_UPSCALER
    return UPSCALER_ALIASES.get(model_id, model_id)
