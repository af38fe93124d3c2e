"""Tiny seeded SD-1.5-shaped models written to disk: a diffusers folder, or an original-layout single-file checkpoint.

Their outputs are noise: they exist so tests and demos load weights through the production path in under a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sdserver.catalog.layout import CHECKPOINTS_DIR, CONFIG_DIR_SUFFIX, DIFFUSERS_DIR

# Words the tiny tokenizer knows whole; anything else falls back to single characters.
TINY_WORDS = ("a", "cat", "dog", "photo", "of", "the", "red", "blue", "house", "ugly", "blurry", "tree")
LAYERS_PER_BLOCK = 1
UNET_CHANNELS = (32, 64)
VAE_CHANNELS = (32, 64)
# The SD 1.5 noise schedule, so scheduler behaviour matches real models.
SD15_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}


def make_tiny_model(
    models_dir: Path, model_id: str, *, single_file: bool = False, seed: int = 0, inpainting: bool = False
) -> Path:
    """Write a tiny model under `models_dir` where the engine looks for it; returns the folder or checkpoint file.
    `inpainting` makes a 9-channel UNet, like the SD 1.5 inpainting checkpoints."""
    pipe = build_tiny_pipeline(seed, in_channels=9 if inpainting else 4)
    if not single_file:
        folder = models_dir / DIFFUSERS_DIR / model_id
        pipe.save_pretrained(folder, safe_serialization=True)
        return folder
    checkpoints = models_dir / CHECKPOINTS_DIR
    config_dir = checkpoints / f"{model_id}{CONFIG_DIR_SUFFIX}"
    pipe.save_pretrained(config_dir, safe_serialization=True)
    # The config folder keeps configs and tokenizer only: weights come from the checkpoint.
    for weights in config_dir.rglob("*.safetensors"):
        weights.unlink()
    file = checkpoints / f"{model_id}.safetensors"
    save_file(original_layout_state_dict(pipe), file)
    return file


def build_tiny_pipeline(seed: int = 0, in_channels: int = 4) -> Any:
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    unet: Any = UNet2DConditionModel(  # type: ignore[no-untyped-call]
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=LAYERS_PER_BLOCK,
        block_out_channels=UNET_CHANNELS,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        norm_num_groups=32,
    )
    vae: Any = AutoencoderKL(  # type: ignore[no-untyped-call]
        in_channels=3,
        out_channels=3,
        block_out_channels=VAE_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS),
        latent_channels=4,
        layers_per_block=LAYERS_PER_BLOCK,
        norm_num_groups=32,
        sample_size=64,
    )
    text_encoder: Any = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_act="quick_gelu",
        )
    )
    return StableDiffusionPipeline(  # type: ignore[no-untyped-call]
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER),  # type: ignore[no-untyped-call]
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer with the byte alphabet plus a few whole words (a few hundred entries)."""
    alphabet = _byte_alphabet()
    tokens = [*alphabet, *(char + "</w>" for char in alphabet)]
    merges: list[str] = []
    for word in TINY_WORDS:
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            tokens.append(pieces[0])
    vocab: dict[str, int] = {}
    for token in [*tokens, "<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    pairs = [tuple(merge.split(" ")) for merge in dict.fromkeys(merges)]
    # transformers types `merges` as strings; the tokenizer also takes (left, right) pairs, which keep spaces safe.
    return CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=77)  # type: ignore[arg-type]


def _byte_alphabet() -> list[str]:
    """GPT-2 style byte alphabet: printable bytes as themselves, the rest shifted past 255, printable ones first."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = 256 - len(keep)
    return [chr(code) for code in keep] + [chr(256 + n) for n in range(shifted)]


def original_layout_state_dict(pipe: Any) -> dict[str, torch.Tensor]:
    """The pipeline's weights renamed to the original (CompVis/LDM) single-file layout SD 1.x checkpoints use.

    A deliberate copy, for this module's fixed two-level shapes, of what `tiny_families.original_layout` does for
    any UNet/VAE; test_tiny_families checks the two give the same checkpoint."""
    state: dict[str, torch.Tensor] = {}
    for key, value in pipe.unet.state_dict().items():
        state["model.diffusion_model." + _unet_key(key)] = value
    for key, value in pipe.vae.state_dict().items():
        new_key, new_value = _vae_entry(key, value)
        state["first_stage_model." + new_key] = new_value
    for key, value in pipe.text_encoder.state_dict().items():
        prefix = "" if key.startswith("text_model.") else "text_model."
        state["cond_stage_model.transformer." + prefix + key] = value
    # Extras real SD 1.x files carry and loaders must ignore.
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    state["alphas_cumprod"] = torch.linspace(0.999, 0.005, 1000)
    state["model_ema.decay"] = torch.tensor(0.9999)
    return {key: value.contiguous().clone() for key, value in state.items()}


_RESNET_TO_LDM = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "time_emb_proj.": "emb_layers.1.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "conv_shortcut.": "skip_connection.",
}


def _unet_prefixes() -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) pairs for the tiny UNet's layout."""
    step = LAYERS_PER_BLOCK + 1
    pairs = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    for level in range(len(UNET_CHANNELS)):
        for layer in range(LAYERS_PER_BLOCK):
            block = 1 + level * step + layer
            pairs.append((f"down_blocks.{level}.resnets.{layer}.", f"input_blocks.{block}.0."))
            pairs.append((f"down_blocks.{level}.attentions.{layer}.", f"input_blocks.{block}.1."))
        pairs.append((f"down_blocks.{level}.downsamplers.0.conv.", f"input_blocks.{(level + 1) * step}.0.op."))
        for layer in range(step):
            pairs.append((f"up_blocks.{level}.resnets.{layer}.", f"output_blocks.{level * step + layer}.0."))
            pairs.append((f"up_blocks.{level}.attentions.{layer}.", f"output_blocks.{level * step + layer}.1."))
        # The upsampler follows the attention when the level has one.
        has_attention = level == 0
        pairs.append(
            (
                f"up_blocks.{level}.upsamplers.0.",
                f"output_blocks.{level * step + step - 1}.{2 if has_attention else 1}.",
            )
        )
    return pairs


def _unet_key(key: str) -> str:
    for diffusers_prefix, ldm_prefix in _unet_prefixes():
        if key.startswith(diffusers_prefix):
            rest = key[len(diffusers_prefix) :]
            if ".resnets." in diffusers_prefix or diffusers_prefix.startswith("mid_block.resnets"):
                rest = _rename_start(rest, _RESNET_TO_LDM)
            return ldm_prefix + rest
    raise KeyError(f"no original-layout name for UNet weight {key}")


def _vae_entry(key: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    levels = len(VAE_CHANNELS)
    part, _, rest = key.partition(".")
    if part not in {"encoder", "decoder"}:
        return key, value  # quant_conv, post_quant_conv
    pairs = [
        ("conv_norm_out.", "norm_out."),
        ("mid_block.resnets.0.", "mid.block_1."),
        ("mid_block.resnets.1.", "mid.block_2."),
    ]
    for level in range(levels):
        ldm_level = level if part == "encoder" else levels - 1 - level
        kind = "down" if part == "encoder" else "up"
        pairs.append((f"{kind}_blocks.{level}.resnets.", f"{kind}.{ldm_level}.block."))
        sampler = "downsample" if part == "encoder" else "upsample"
        pairs.append((f"{kind}_blocks.{level}.{sampler}rs.0.conv.", f"{kind}.{ldm_level}.{sampler}.conv."))
    if rest.startswith("mid_block.attentions.0."):
        inner = rest.removeprefix("mid_block.attentions.0.")
        names = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
        inner = _rename_start(inner, names)
        # The original attention projections are 1x1 convolutions.
        if value.ndim == 2:
            value = value[:, :, None, None]
        return f"{part}.mid.attn_1.{inner}", value
    rest = _rename_start(rest, dict(pairs))
    return f"{part}.{rest.replace('conv_shortcut.', 'nin_shortcut.')}", value


def _rename_start(text: str, names: dict[str, str]) -> str:
    for old, new in names.items():
        if text.startswith(old):
            return new + text[len(old) :]
        # Nested names (e.g. "resnets.0.norm1."): rename the first component after an index.
        head, dot, tail = text.partition(".")
        if head.isdigit() and tail.startswith(old):
            return head + dot + new + tail[len(old) :]
    return text
