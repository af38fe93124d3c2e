"""Seeded tiny components in the real families' shapes: tokenizers, text encoders, UNets, transformers, VAEs.

Widths keep the real encoders apart (CLIP-L 32, OpenCLIP-H 48, OpenCLIP-bigG 64, T5 96 wide), because single-file
loaders tell the text encoders of one checkpoint apart by their widths. Every VAE has four blocks and so
downsamples 8x like the real ones; a 512x512 image is a 64x64 latent.
"""

from __future__ import annotations

from typing import Any, Final

from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from sdserver.engines.diffusion.tiny_families.clip_vocab import TINY_WORDS, tiny_tokenizer

CLIP_L_WIDTH: Final = 32
OPEN_CLIP_H_WIDTH: Final = 48
OPEN_CLIP_G_WIDTH: Final = 64
T5_WIDTH: Final = 96
TEXT_LAYERS: Final = 2
CLIP_MAX_LENGTH: Final = 77
T5_MAX_LENGTH: Final = 512
OPEN_CLIP_PAD: Final = "!"
VAE_CHANNELS: Final = (8, 8, 16, 16)
VAE_GROUPS: Final = 4
UNET_CHANNELS: Final = (32, 64)
SDXL_TIME_EMBED: Final = 8

# Noise schedules as the real models ship them (the values that matter to scheduler behaviour).
_SD_BETAS: Final[dict[str, Any]] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
}
SD15_SCHEDULER: Final[dict[str, Any]] = {**_SD_BETAS, "skip_prk_steps": True}
SD2V_SCHEDULER: Final[dict[str, Any]] = {**_SD_BETAS, "prediction_type": "v_prediction"}
SDXL_SCHEDULER: Final[dict[str, Any]] = {
    **_SD_BETAS,
    "interpolation_type": "linear",
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
    "use_karras_sigmas": False,
}
LCM_SCHEDULER: Final[dict[str, Any]] = {
    **_SD_BETAS,
    "set_alpha_to_one": True,
    "original_inference_steps": 50,
    "timestep_scaling": 10.0,
    "prediction_type": "epsilon",
}
SD3_SCHEDULER: Final[dict[str, Any]] = {"num_train_timesteps": 1000, "shift": 3.0}
FLUX_SCHEDULER: Final[dict[str, Any]] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
}


def clip_tokenizer(*, open_clip: bool = False) -> Any:
    """The tiny CLIP BPE tokenizer; OpenCLIP's (SD 2.x, SDXL's second) pads with "!" instead of end-of-text."""
    tokenizer = tiny_tokenizer()
    if open_clip:
        tokenizer.pad_token = OPEN_CLIP_PAD
    return tokenizer


def t5_tokenizer() -> Any:
    """A Unigram T5 tokenizer built in memory: special tokens, the tiny words, then single characters."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{word}", -1.0) for word in TINY_WORDS]
    pieces += [(char, -5.0) for char in "abcdefghijklmnopqrstuvwxyz0123456789.,!?-'"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def clip_text_encoder(tokenizer: Any, width: int, *, projection: bool, open_clip: bool) -> Any:
    """CLIP-L (quick_gelu) or OpenCLIP (gelu) text tower; with projection like SDXL/SD3's pooled encoders."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=width * 2,
        projection_dim=width,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=2,
        max_position_embeddings=CLIP_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu" if open_clip else "quick_gelu",
    )
    model: Any = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    return model.eval()


def t5_encoder(tokenizer: Any) -> Any:
    """T5 v1.1 encoder (gated GELU feed-forward), as SD3 and Flux use."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=T5_WIDTH,
        d_ff=T5_WIDTH * 2,
        d_kv=16,
        num_layers=TEXT_LAYERS,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model: Any = T5EncoderModel(config)
    return model.eval()


def sd_unet(
    *,
    cross_attention_dim: int,
    in_channels: int = 4,
    linear_projection: bool = False,
    sdxl_pooled_dim: int | None = None,
    sdxl_time_ids: int = 6,
) -> Any:
    """A two-level UNet, attention at the lower resolution; `sdxl_pooled_dim` adds SDXL's text_time embedding."""
    extra: dict[str, Any] = {}
    if sdxl_pooled_dim is not None:
        extra = {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": SDXL_TIME_EMBED,
            "projection_class_embeddings_input_dim": SDXL_TIME_EMBED * sdxl_time_ids + sdxl_pooled_dim,
            "transformer_layers_per_block": (1, 2),
        }
    unet: Any = UNet2DConditionModel(  # type: ignore[no-untyped-call]
        sample_size=64,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=UNET_CHANNELS,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4),
        use_linear_projection=linear_projection,
        norm_num_groups=32,
        **extra,
    )
    return unet.eval()


def vae(
    *, latent_channels: int = 4, scaling_factor: float = 0.18215, shift_factor: float | None = None, quant: bool = True
) -> Any:
    """Four encoder/decoder blocks (8x), like every real SD/SDXL/SD3/Flux VAE; SD3 and Flux have no quant convs."""
    model: Any = AutoencoderKL(  # type: ignore[no-untyped-call]
        in_channels=3,
        out_channels=3,
        block_out_channels=VAE_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS),
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=VAE_GROUPS,
        sample_size=512,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=quant,
        use_post_quant_conv=quant,
    )
    return model.eval()


def sd3_transformer(*, pooled_dim: int) -> Any:
    """MMDiT with two joint blocks; the last block's context stream is pre-only, as in SD3."""
    model: Any = SD3Transformer2DModel(  # type: ignore[no-untyped-call]
        sample_size=64,
        patch_size=2,
        in_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=T5_WIDTH,
        caption_projection_dim=32,
        pooled_projection_dim=pooled_dim,
        out_channels=16,
        pos_embed_max_size=64,
    )
    return model.eval()


def flux_transformer(*, guidance: bool) -> Any:
    """One double-stream and one single-stream block; `guidance` embeds the guidance scale as FLUX.1-dev does."""
    model: Any = FluxTransformer2DModel(  # type: ignore[no-untyped-call]
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=CLIP_L_WIDTH,
        guidance_embeds=guidance,
        axes_dims_rope=(4, 6, 6),
    )
    return model.eval()
