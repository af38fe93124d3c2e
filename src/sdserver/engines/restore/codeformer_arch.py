"""CodeFormer: a VQGAN encoder, a transformer that predicts codebook entries, the VQGAN generator, and
controllable fusion of encoder features; names and shapes follow the published `codeformer.pth`."""

from __future__ import annotations

from typing import Final

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The published configuration: 512×512 faces, 16×16 latents of 256 channels, a 1024-entry codebook.
IMAGE_SIZE: Final = 512
BASE_CH: Final = 64
CH_MULT: Final = (1, 2, 2, 4, 4, 8)
RES_BLOCKS: Final = 2
ATTN_RESOLUTION: Final = 16
EMBED_DIM: Final = 256
GROUPS: Final = 32
NORM_EPS: Final = 1e-6
# Encoder block after which each resolution's features are kept, generator block after which they are fused.
ENCODER_TAPS: Final = {512: 2, 256: 5, 128: 8, 64: 11, 32: 14, 16: 18}
GENERATOR_TAPS: Final = {16: 6, 32: 9, 64: 12, 128: 15, 256: 18, 512: 21}
FUSED_RESOLUTIONS: Final = (32, 64, 128, 256)
FUSE_CHANNELS: Final = {32: 256, 64: 256, 128: 128, 256: 128}


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=NORM_EPS)


class ResBlock(nn.Module):
    """GroupNorm–SiLU–conv twice, with a 1×1 `conv_out` on the skip when the channel count changes."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.norm2 = group_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.conv_out = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.silu(self.norm1(x)))
        out = self.conv2(F.silu(self.norm2(out)))
        skip = x if self.conv_out is None else self.conv_out(x)
        result: Tensor = out + skip
        return result


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, with 1×1 convs as projections."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        normed = self.norm(x)
        q, k, v = (proj(normed).flatten(2).transpose(1, 2) for proj in (self.q, self.k, self.v))
        attended = F.scaled_dot_product_attention(q, k, v)
        result: Tensor = x + self.proj_out(attended.transpose(1, 2).reshape(batch, channels, height, width))
        return result


class Downsample(nn.Module):
    """Stride-2 3×3 conv after padding one pixel on the right and bottom only."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.conv(F.pad(x, (0, 1, 0, 1)))
        return result


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return result


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(3, BASE_CH, 3, 1, 1)]
        resolution, in_ch = IMAGE_SIZE, BASE_CH
        for level, mult in enumerate(CH_MULT):
            for _ in range(RES_BLOCKS):
                blocks.append(ResBlock(in_ch, BASE_CH * mult))
                in_ch = BASE_CH * mult
                if resolution == ATTN_RESOLUTION:
                    blocks.append(AttnBlock(in_ch))
            if level != len(CH_MULT) - 1:
                blocks.append(Downsample(in_ch))
                resolution //= 2
        blocks += [ResBlock(in_ch, in_ch), AttnBlock(in_ch), ResBlock(in_ch, in_ch)]
        blocks += [group_norm(in_ch), nn.Conv2d(in_ch, EMBED_DIM, 3, 1, 1)]
        self.blocks = nn.ModuleList(blocks)


class Generator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        in_ch = BASE_CH * CH_MULT[-1]
        resolution = IMAGE_SIZE // 2 ** (len(CH_MULT) - 1)
        blocks: list[nn.Module] = [nn.Conv2d(EMBED_DIM, in_ch, 3, 1, 1)]
        blocks += [ResBlock(in_ch, in_ch), AttnBlock(in_ch), ResBlock(in_ch, in_ch)]
        for level in reversed(range(len(CH_MULT))):
            for _ in range(RES_BLOCKS):
                blocks.append(ResBlock(in_ch, BASE_CH * CH_MULT[level]))
                in_ch = BASE_CH * CH_MULT[level]
                if resolution == ATTN_RESOLUTION:
                    blocks.append(AttnBlock(in_ch))
            if level != 0:
                blocks.append(Upsample(in_ch))
                resolution *= 2
        blocks += [group_norm(in_ch), nn.Conv2d(in_ch, 3, 3, 1, 1)]
        self.blocks = nn.ModuleList(blocks)


class Codebook(nn.Module):
    """The VQGAN codebook (`quantize.embedding`)."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(size, dim)


class TransformerLayer(nn.Module):
    """Pre-norm self-attention (position added to queries and keys only) and a GELU MLP."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads)
        self.linear1 = nn.Linear(dim, mlp_dim)
        self.linear2 = nn.Linear(mlp_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        normed = self.norm1(x)
        query = normed + pos
        x = x + self.self_attn(query, query, normed, need_weights=False)[0]
        out: Tensor = x + self.linear2(F.gelu(self.linear1(self.norm2(x))))
        return out


class FuseBlock(nn.Module):
    """Controllable feature transform: encoder and generator features predict a scale and shift that move the
    generator's features by `fidelity` of the way (0: pure codebook prior, 1: closest to the input)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.encode_enc = ResBlock(2 * channels, channels)
        self.scale = _branch(channels)
        self.shift = _branch(channels)

    def forward(self, enc: Tensor, dec: Tensor, fidelity: float) -> Tensor:
        feat = self.encode_enc(torch.cat([enc, dec], dim=1))
        out: Tensor = dec + fidelity * (dec * self.scale(feat) + self.shift(feat))
        return out


def _branch(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(channels, channels, 3, 1, 1)
    )


def _instance_stats(feat: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    flat = feat.flatten(2)
    return flat.mean(dim=2)[..., None, None], (flat.var(dim=2) + eps).sqrt()[..., None, None]


class CodeFormer(nn.Module):
    """The published CodeFormer network. Input and output are B×3×512×512 in [-1, 1]."""

    def __init__(self, dim: int = 512, heads: int = 8, layers: int = 9, codebook_size: int = 1024) -> None:
        super().__init__()
        latent_tokens = (IMAGE_SIZE // 2 ** (len(CH_MULT) - 1)) ** 2
        self.encoder = Encoder()
        self.quantize = Codebook(codebook_size, EMBED_DIM)
        self.generator = Generator()
        self.position_emb = nn.Parameter(torch.zeros(latent_tokens, dim))
        self.feat_emb = nn.Linear(EMBED_DIM, dim)
        self.ft_layers = nn.Sequential(*(TransformerLayer(dim, heads, dim * 2) for _ in range(layers)))
        self.idx_pred_layer = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, codebook_size, bias=False))
        self.fuse_convs_dict = nn.ModuleDict({str(res): FuseBlock(FUSE_CHANNELS[res]) for res in FUSED_RESOLUTIONS})

    def forward(self, x: Tensor, fidelity: float = 0.5) -> Tensor:
        kept: dict[int, Tensor] = {}
        taps = {ENCODER_TAPS[res] for res in FUSED_RESOLUTIONS}
        for index, block in enumerate(self.encoder.blocks):
            x = block(x)
            if index in taps:
                kept[x.shape[-1]] = x
        latent = x
        batch, channels, height, width = latent.shape
        # Tokens are sequence-first, as nn.MultiheadAttention expects by default.
        tokens = self.feat_emb(latent.flatten(2).permute(2, 0, 1))
        pos = self.position_emb.unsqueeze(1).expand(-1, batch, -1)
        for layer in self.ft_layers:
            tokens = layer(tokens, pos)
        codes = self.idx_pred_layer(tokens).argmax(dim=2).transpose(0, 1)
        quant = self.quantize.embedding(codes).view(batch, height, width, channels).permute(0, 3, 1, 2)
        # AdaIN: the codebook features take the input latent's per-channel mean and spread (colour, lighting).
        quant_mean, quant_std = _instance_stats(quant)
        lq_mean, lq_std = _instance_stats(latent)
        x = (quant - quant_mean) / quant_std * lq_std + lq_mean
        fuse_at = {GENERATOR_TAPS[res]: res for res in FUSED_RESOLUTIONS}
        for index, block in enumerate(self.generator.blocks):
            x = block(x)
            res = fuse_at.get(index)
            if res is not None and fidelity > 0:
                x = self.fuse_convs_dict[str(res)](kept[res], x, fidelity)
        return x
