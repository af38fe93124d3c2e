"""The tiny model recipes by name; torch-free, so the CLI can list them without loading torch."""

from __future__ import annotations

from enum import StrEnum


class TinyFamily(StrEnum):
    """What `models make-tiny --family` builds: one per model family, plus `lcm` (SD 1.5 with an LCM scheduler);
    `sd2v` is SD 2.x with v-prediction, like the 768-v models."""

    SD15 = "sd15"
    SD2V = "sd2v"
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl_refiner"
    SD3 = "sd3"
    FLUX = "flux"
    LCM = "lcm"


# Recipes without a single-file form, and why.
FOLDER_ONLY: dict[TinyFamily, str] = {
    TinyFamily.FLUX: "tiny Flux models are folders only: diffusers' Flux single-file converter assumes FLUX.1's "
    "full width (3072), so no narrower Flux checkpoint can load",
}
