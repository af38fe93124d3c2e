"""The model families this server runs and what detection reports about one model."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class ModelFamily(StrEnum):
    """Architectures, one diffusers pipeline family each. LCM and Turbo models are not families of their own:
    they are SD 1.5/SDXL layouts with a few-step scheduler, reported in `FamilyInfo.few_step`."""

    SD15 = "sd15"  # SD 1.x: OpenAI CLIP ViT-L/14 text encoder, 768-wide context
    SD2 = "sd2"  # SD 2.x: OpenCLIP ViT-H/14, 1024-wide context; 512-base is epsilon, 768-v is v-prediction
    SDXL = "sdxl"  # CLIP ViT-L plus OpenCLIP bigG, text_time size conditioning
    SDXL_REFINER = "sdxl_refiner"  # OpenCLIP bigG only, aesthetic-score conditioning; an img2img model
    SD3 = "sd3"  # MMDiT; CLIP-L, CLIP-G and (optional) T5-XXL text encoders; SD 3.5 included
    FLUX = "flux"  # FLUX.1 dev/schnell/fill: double- and single-stream transformer, CLIP-L plus T5-XXL


class PredictionType(StrEnum):
    EPSILON = "epsilon"
    V_PREDICTION = "v_prediction"
    SAMPLE = "sample"
    FLOW_MATCH = "flow_match"  # rectified flow (SD3, Flux): the scheduler is a flow-matching one, always


class FewStep(StrEnum):
    """A model distilled to sample in a handful of steps, with little or no classifier-free guidance."""

    LCM = "lcm"  # an LCMScheduler config, an LCM pipeline class, or an LCM guidance embedding in the UNet
    SCHNELL = "schnell"  # FLUX.1 without a guidance embedder (schnell): 1-4 steps, no guidance


# What each family's text-to-image pipeline needs weights for (diffusers component names). SD3 runs without T5.
REQUIRED_COMPONENTS: Final[dict[ModelFamily, frozenset[str]]] = {
    ModelFamily.SD15: frozenset({"unet", "vae", "text_encoder"}),
    ModelFamily.SD2: frozenset({"unet", "vae", "text_encoder"}),
    ModelFamily.SDXL: frozenset({"unet", "vae", "text_encoder", "text_encoder_2"}),
    ModelFamily.SDXL_REFINER: frozenset({"unet", "vae", "text_encoder_2"}),
    ModelFamily.SD3: frozenset({"transformer", "vae", "text_encoder", "text_encoder_2"}),
    ModelFamily.FLUX: frozenset({"transformer", "vae", "text_encoder", "text_encoder_2"}),
}


@dataclass(frozen=True)
class FamilyInfo:
    """What a model's files say about it, read without loading a weight.

    `prediction_type` is None when the files do not say: SD 2.x single files look the same for the epsilon
    512-base and the v-prediction 768-v models, so the loader needs a config folder or the user's word.
    `components` names the diffusers components the source holds weights for; a single file often lacks some
    (a Flux transformer-only file, an SD3 file without text encoders): see `missing_components`.
    `evidence` says what decided the family, for logs and messages.
    """

    family: ModelFamily
    prediction_type: PredictionType | None
    inpainting: bool = False
    few_step: FewStep | None = None
    pipeline_class: str | None = None
    components: frozenset[str] = frozenset()
    evidence: str = ""

    @property
    def missing_components(self) -> frozenset[str]:
        return REQUIRED_COMPONENTS[self.family] - self.components
