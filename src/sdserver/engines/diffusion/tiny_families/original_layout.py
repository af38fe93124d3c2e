"""Diffusers weights renamed to the original single-file layouts (LDM UNet and VAE, OpenAI CLIP and OpenCLIP text
towers, SD3's MMDiT, T5) so tiny checkpoints look like the files users download.

Each function is the inverse of the matching converter in diffusers' single-file loader; the tests load the
result with `from_single_file` and compare it weight for weight with the folder it came from. The UNet, OpenCLIP
and MMDiT converters raise KeyError for a weight they cannot name, so a layout change cannot drop one silently.
"""

from __future__ import annotations

from typing import Any, Final

import torch

Tensors = dict[str, torch.Tensor]

_UNET_RESNET: Final = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("conv_shortcut.", "skip_connection."),
)
_VAE_ATTENTION: Final = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)
_OPEN_CLIP_LAYER: Final = (
    ("self_attn.out_proj.", "attn.out_proj."),
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
)


def prefixed(prefix: str, tensors: Tensors) -> Tensors:
    return {prefix + key: value for key, value in tensors.items()}


def unet_to_ldm(unet: Any) -> Tensors:
    """A UNet2DConditionModel in the LDM layout (input_blocks/middle_block/output_blocks), without a prefix."""
    config = unet.config
    if config.time_cond_proj_dim is not None:
        raise KeyError("the LDM layout has no name for an LCM guidance embedding (time_embedding.cond_proj)")
    prefixes = _unet_prefixes(config)
    out: Tensors = {}
    for key, value in unet.state_dict().items():
        for new_prefix, old_prefix, resnet in prefixes:
            if key.startswith(new_prefix):
                rest = key[len(new_prefix) :]
                out[old_prefix + (_rename(rest, _UNET_RESNET) if resnet else rest)] = value
                break
        else:
            raise KeyError(f"no LDM name for UNet weight {key}")
    return out


def _unet_prefixes(config: Any) -> list[tuple[str, str, bool]]:
    """(diffusers prefix, LDM prefix, is a resnet) for every block of this UNet config."""
    step = config.layers_per_block + 1
    pairs = [
        ("time_embedding.linear_1.", "time_embed.0.", False),
        ("time_embedding.linear_2.", "time_embed.2.", False),
        ("add_embedding.linear_1.", "label_emb.0.0.", False),
        ("add_embedding.linear_2.", "label_emb.0.2.", False),
        ("conv_in.", "input_blocks.0.0.", False),
        ("conv_norm_out.", "out.0.", False),
        ("conv_out.", "out.2.", False),
        ("mid_block.resnets.0.", "middle_block.0.", True),
        ("mid_block.attentions.0.", "middle_block.1.", False),
        ("mid_block.resnets.1.", "middle_block.2.", True),
    ]
    levels = len(config.block_out_channels)
    for level in range(levels):
        for layer in range(config.layers_per_block):
            block = 1 + level * step + layer
            pairs.append((f"down_blocks.{level}.resnets.{layer}.", f"input_blocks.{block}.0.", True))
            pairs.append((f"down_blocks.{level}.attentions.{layer}.", f"input_blocks.{block}.1.", False))
        pairs.append((f"down_blocks.{level}.downsamplers.0.conv.", f"input_blocks.{(level + 1) * step}.0.op.", False))
        for layer in range(step):
            pairs.append((f"up_blocks.{level}.resnets.{layer}.", f"output_blocks.{level * step + layer}.0.", True))
            pairs.append((f"up_blocks.{level}.attentions.{layer}.", f"output_blocks.{level * step + layer}.1.", False))
        # The upsampler follows the attention when the level has one.
        slot = 2 if "CrossAttn" in config.up_block_types[level] else 1
        pairs.append((f"up_blocks.{level}.upsamplers.0.", f"output_blocks.{level * step + step - 1}.{slot}.", False))
    return pairs


def vae_to_ldm(vae: Any) -> Tensors:
    """An AutoencoderKL in the LDM layout (encoder.down.N.block, decoder.up.N.block, mid.attn_1), no prefix."""
    levels = len(vae.config.block_out_channels)
    out: Tensors = {}
    for key, value in vae.state_dict().items():
        part, _, rest = key.partition(".")
        if part not in {"encoder", "decoder"}:
            out[key] = value  # quant_conv, post_quant_conv
            continue
        if rest.startswith("mid_block.attentions.0."):
            inner = _rename(rest.removeprefix("mid_block.attentions.0."), _VAE_ATTENTION)
            # The original attention projections are 1x1 convolutions.
            out[f"{part}.mid.attn_1.{inner}"] = value[:, :, None, None] if value.ndim == 2 else value
            continue
        out[f"{part}.{_vae_block_name(part, rest, levels)}"] = value
    return out


def _vae_block_name(part: str, rest: str, levels: int) -> str:
    names = [
        ("conv_norm_out.", "norm_out."),
        ("mid_block.resnets.0.", "mid.block_1."),
        ("mid_block.resnets.1.", "mid.block_2."),
    ]
    kind, sampler = ("down", "downsample") if part == "encoder" else ("up", "upsample")
    for level in range(levels):
        # The decoder's blocks count from the lowest resolution in diffusers, from the highest in LDM.
        ldm_level = level if part == "encoder" else levels - 1 - level
        names.append((f"{kind}_blocks.{level}.resnets.", f"{kind}.{ldm_level}.block."))
        names.append((f"{kind}_blocks.{level}.{sampler}rs.0.conv.", f"{kind}.{ldm_level}.{sampler}.conv."))
    for new, old in names:
        if rest.startswith(new):
            return (old + rest[len(new) :]).replace("conv_shortcut.", "nin_shortcut.")
    return rest  # conv_in, conv_out


def clip_to_hf(text_encoder: Any, *, projection: bool = True) -> Tensors:
    """A transformers CLIP text model as original checkpoints store it (`text_model.` names, HF layout).
    transformers 5.6 dropped the `text_model.` level from CLIPTextModel; the files keep it."""
    out: Tensors = {}
    for key, value in text_encoder.state_dict().items():
        if key.startswith("text_projection."):
            if projection:
                out[key] = value
            continue
        out[key if key.startswith("text_model.") else "text_model." + key] = value
    # Real SD 1.x and SDXL files carry the position ids buffer; loaders must ignore it.
    positions = out["text_model.embeddings.position_embedding.weight"].shape[0]
    out["text_model.embeddings.position_ids"] = torch.arange(positions)[None]
    return out


def clip_to_open_clip(text_encoder: Any) -> Tensors:
    """A CLIP text model in OpenCLIP's layout (resblocks with fused in_proj, text_projection as a matrix)."""
    source = {key.removeprefix("text_model."): value for key, value in text_encoder.state_dict().items()}
    width = source["embeddings.token_embedding.weight"].shape[1]
    projection = source.pop("text_projection.weight", None)
    out: Tensors = {
        "token_embedding.weight": source.pop("embeddings.token_embedding.weight"),
        "positional_embedding": source.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": source.pop("final_layer_norm.weight"),
        "ln_final.bias": source.pop("final_layer_norm.bias"),
        # SD 2.x files carry a projection the text model never uses; the pooled encoders of SDXL use theirs.
        "text_projection": (projection.T if projection is not None else torch.eye(width)).contiguous(),
    }
    layers = {int(key.split(".")[2]) for key in source if key.startswith("encoder.layers.")}
    for layer in sorted(layers):
        old, new = f"encoder.layers.{layer}.", f"transformer.resblocks.{layer}."
        for suffix in ("weight", "bias"):
            qkv = [source.pop(f"{old}self_attn.{name}_proj.{suffix}") for name in ("q", "k", "v")]
            out[f"{new}attn.in_proj_{suffix}"] = torch.cat(qkv)
        for key in [key for key in source if key.startswith(old)]:
            out[new + _rename(key[len(old) :], _OPEN_CLIP_LAYER)] = source.pop(key)
    if source:
        raise KeyError(f"no OpenCLIP name for text encoder weights {sorted(source)}")
    return out


def t5_to_hf(text_encoder: Any) -> Tensors:
    """T5 encoder weights as SD3 single files store them (the transformers layout, shared embedding included)."""
    return dict(text_encoder.state_dict())


def mmdit_to_sd3(transformer: Any) -> Tensors:
    """An SD3Transformer2DModel in Stability's MMDiT layout (joint_blocks, fused qkv, shift-first modulation)."""
    source = dict(transformer.state_dict())
    take = source.pop
    out: Tensors = {"pos_embed": take("pos_embed.pos_embed")}
    renames = {
        "pos_embed.proj.": "x_embedder.proj.",
        "time_text_embed.timestep_embedder.linear_1.": "t_embedder.mlp.0.",
        "time_text_embed.timestep_embedder.linear_2.": "t_embedder.mlp.2.",
        "time_text_embed.text_embedder.linear_1.": "y_embedder.mlp.0.",
        "time_text_embed.text_embedder.linear_2.": "y_embedder.mlp.2.",
        "context_embedder.": "context_embedder.",
        "proj_out.": "final_layer.linear.",
    }
    for new, old in renames.items():
        for suffix in ("weight", "bias"):
            out[f"{old}{suffix}"] = take(f"{new}{suffix}")
    layers = transformer.config.num_layers
    for layer in range(layers):
        out.update(_joint_block(source, layer, last=layer == layers - 1))
    for suffix in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{suffix}"] = _swap_halves(take(f"norm_out.linear.{suffix}"))
    if source:
        raise KeyError(f"no MMDiT name for transformer weights {sorted(source)}")
    return out


def _joint_block(source: Tensors, layer: int, *, last: bool) -> Tensors:
    new, old = f"transformer_blocks.{layer}.", f"joint_blocks.{layer}."
    fused = [
        ("attn.to_", ("q", "k", "v"), "x_block.attn.qkv"),
        ("attn.add_", ("q_proj", "k_proj", "v_proj"), "context_block.attn.qkv"),
    ]
    if f"{new}attn2.to_q.weight" in source:  # SD 3.5's second self-attention on the image stream
        fused.append(("attn2.to_", ("q", "k", "v"), "x_block.attn2.qkv"))
    out: Tensors = {}
    for suffix in ("weight", "bias"):
        for head, names, original_name in fused:
            qkv = [source.pop(f"{new}{head}{name}.{suffix}") for name in names]
            out[f"{old}{original_name}.{suffix}"] = torch.cat(qkv)
        pairs = [
            ("attn.to_out.0.", "x_block.attn.proj."),
            ("norm1.linear.", "x_block.adaLN_modulation.1."),
            ("ff.net.0.proj.", "x_block.mlp.fc1."),
            ("ff.net.2.", "x_block.mlp.fc2."),
        ]
        if f"{new}attn2.to_out.0.{suffix}" in source:
            pairs.append(("attn2.to_out.0.", "x_block.attn2.proj."))
        if not last:
            pairs += [
                ("attn.to_add_out.", "context_block.attn.proj."),
                ("norm1_context.linear.", "context_block.adaLN_modulation.1."),
                ("ff_context.net.0.proj.", "context_block.mlp.fc1."),
                ("ff_context.net.2.", "context_block.mlp.fc2."),
            ]
        for diffusers_name, original_name in pairs:
            out[f"{old}{original_name}{suffix}"] = source.pop(f"{new}{diffusers_name}{suffix}")
        if last:
            # The last context stream only modulates; diffusers orders its modulation scale-first.
            modulation = source.pop(f"{new}norm1_context.linear.{suffix}")
            out[f"{old}context_block.adaLN_modulation.1.{suffix}"] = _swap_halves(modulation)
    for norm, original_name in (
        ("attn.norm_q", "x_block.attn.ln_q"),
        ("attn.norm_k", "x_block.attn.ln_k"),
        ("attn.norm_added_q", "context_block.attn.ln_q"),
        ("attn.norm_added_k", "context_block.attn.ln_k"),
        ("attn2.norm_q", "x_block.attn2.ln_q"),
        ("attn2.norm_k", "x_block.attn2.ln_k"),
    ):
        if f"{new}{norm}.weight" in source:
            out[f"{old}{original_name}.weight"] = source.pop(f"{new}{norm}.weight")
    return out


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first]).contiguous()


def _rename(text: str, names: tuple[tuple[str, str], ...]) -> str:
    for new, old in names:
        if text.startswith(new):
            return old + text[len(new) :]
    return text
