"""One tiny seeded pipeline per model family, assembled from `components` in the family's real layout."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import torch
from diffusers import (
    DDIMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    LCMScheduler,
    PNDMScheduler,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)

from sdserver.engines.diffusion.tiny_families import components as parts
from sdserver.engines.diffusion.tiny_families.names import TinyFamily


def build_tiny_family_pipeline(family: TinyFamily, *, seed: int = 0, inpainting: bool = False) -> Any:
    """The family's diffusers pipeline with random weights drawn from `seed`; `inpainting` gives a 9-channel UNet."""
    if inpainting and family not in _INPAINTABLE:
        raise ValueError(
            f"inpainting: tiny {family.value} models have no inpainting variant, got family={family.value!r}"
        )
    torch.manual_seed(seed)
    return _BUILDERS[family](9 if inpainting else 4)


def _sd15(in_channels: int, *, lcm: bool = False) -> Any:
    tokenizer = parts.clip_tokenizer()
    scheduler_class: Any = LCMScheduler if lcm else PNDMScheduler
    config = parts.LCM_SCHEDULER if lcm else parts.SD15_SCHEDULER
    return StableDiffusionPipeline(  # type: ignore[no-untyped-call]
        vae=parts.vae(),
        text_encoder=parts.clip_text_encoder(tokenizer, parts.CLIP_L_WIDTH, projection=False, open_clip=False),
        tokenizer=tokenizer,
        unet=parts.sd_unet(cross_attention_dim=parts.CLIP_L_WIDTH, in_channels=in_channels),
        scheduler=scheduler_class.from_config(config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _lcm(in_channels: int) -> Any:
    return _sd15(in_channels, lcm=True)


def _sd2v(in_channels: int) -> Any:
    tokenizer = parts.clip_tokenizer(open_clip=True)
    return StableDiffusionPipeline(  # type: ignore[no-untyped-call]
        vae=parts.vae(),
        text_encoder=parts.clip_text_encoder(tokenizer, parts.OPEN_CLIP_H_WIDTH, projection=False, open_clip=True),
        tokenizer=tokenizer,
        unet=parts.sd_unet(
            cross_attention_dim=parts.OPEN_CLIP_H_WIDTH, in_channels=in_channels, linear_projection=True
        ),
        scheduler=DDIMScheduler.from_config(parts.SD2V_SCHEDULER),  # type: ignore[no-untyped-call]
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _sdxl(in_channels: int) -> Any:
    tokenizer, tokenizer_2 = parts.clip_tokenizer(), parts.clip_tokenizer(open_clip=True)
    unet = parts.sd_unet(
        cross_attention_dim=parts.CLIP_L_WIDTH + parts.OPEN_CLIP_G_WIDTH,
        in_channels=in_channels,
        linear_projection=True,
        sdxl_pooled_dim=parts.OPEN_CLIP_G_WIDTH,
    )
    return StableDiffusionXLPipeline(  # type: ignore[no-untyped-call]
        vae=parts.vae(scaling_factor=0.13025),
        text_encoder=parts.clip_text_encoder(tokenizer, parts.CLIP_L_WIDTH, projection=False, open_clip=False),
        text_encoder_2=parts.clip_text_encoder(tokenizer_2, parts.OPEN_CLIP_G_WIDTH, projection=True, open_clip=True),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(parts.SDXL_SCHEDULER),  # type: ignore[no-untyped-call]
    )


def _sdxl_refiner(in_channels: int) -> Any:
    # The refiner conditions on OpenCLIP-bigG alone and on an aesthetic score instead of the target size.
    tokenizer_2 = parts.clip_tokenizer(open_clip=True)
    unet = parts.sd_unet(
        cross_attention_dim=parts.OPEN_CLIP_G_WIDTH,
        in_channels=in_channels,
        linear_projection=True,
        sdxl_pooled_dim=parts.OPEN_CLIP_G_WIDTH,
        sdxl_time_ids=5,
    )
    return StableDiffusionXLImg2ImgPipeline(  # type: ignore[no-untyped-call]
        vae=parts.vae(scaling_factor=0.13025),
        text_encoder=None,
        text_encoder_2=parts.clip_text_encoder(tokenizer_2, parts.OPEN_CLIP_G_WIDTH, projection=True, open_clip=True),
        tokenizer=None,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(parts.SDXL_SCHEDULER),  # type: ignore[no-untyped-call]
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )


def _sd3(_in_channels: int) -> Any:
    tokenizer, tokenizer_2, tokenizer_3 = parts.clip_tokenizer(), parts.clip_tokenizer(), parts.t5_tokenizer()
    clip_l = parts.clip_text_encoder(tokenizer, parts.CLIP_L_WIDTH, projection=True, open_clip=False)
    # SD3 single files carry no CLIP-L projection and the single-file loader puts an identity there: so does this.
    with torch.no_grad():
        clip_l.text_projection.weight.copy_(torch.eye(parts.CLIP_L_WIDTH))
    return StableDiffusion3Pipeline(  # type: ignore[no-untyped-call]
        transformer=parts.sd3_transformer(pooled_dim=parts.CLIP_L_WIDTH + parts.OPEN_CLIP_G_WIDTH),
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(parts.SD3_SCHEDULER),  # type: ignore[no-untyped-call]
        vae=parts.vae(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, quant=False),
        text_encoder=clip_l,
        tokenizer=tokenizer,
        text_encoder_2=parts.clip_text_encoder(tokenizer_2, parts.OPEN_CLIP_G_WIDTH, projection=True, open_clip=True),
        tokenizer_2=tokenizer_2,
        text_encoder_3=parts.t5_encoder(tokenizer_3),
        tokenizer_3=tokenizer_3,
    )


def _flux(_in_channels: int) -> Any:
    tokenizer, tokenizer_2 = parts.clip_tokenizer(), parts.t5_tokenizer()
    return FluxPipeline(  # type: ignore[no-untyped-call]
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(parts.FLUX_SCHEDULER),  # type: ignore[no-untyped-call]
        vae=parts.vae(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, quant=False),
        text_encoder=parts.clip_text_encoder(tokenizer, parts.CLIP_L_WIDTH, projection=False, open_clip=False),
        tokenizer=tokenizer,
        text_encoder_2=parts.t5_encoder(tokenizer_2),
        tokenizer_2=tokenizer_2,
        transformer=parts.flux_transformer(guidance=True),
    )


_BUILDERS: Final[dict[TinyFamily, Callable[[int], Any]]] = {
    TinyFamily.SD15: _sd15,
    TinyFamily.SD2V: _sd2v,
    TinyFamily.SDXL: _sdxl,
    TinyFamily.SDXL_REFINER: _sdxl_refiner,
    TinyFamily.SD3: _sd3,
    TinyFamily.FLUX: _flux,
    TinyFamily.LCM: _lcm,
}
_INPAINTABLE: Final = frozenset({TinyFamily.SD15, TinyFamily.SD2V, TinyFamily.SDXL, TinyFamily.LCM})
