"""GFPGAN v1.3/v1.4 (the "clean" network): a U-Net encoder whose features steer a StyleGAN2 decoder through SFT;
parameter names and shapes follow the published `GFPGANv1.3.pth`/`GFPGANv1.4.pth` so they load strictly."""

from __future__ import annotations

import math
from typing import Final

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LRELU_SLOPE: Final = 0.2
# StyleGAN2 scales every leaky-ReLU output back up by √2 so activations keep unit variance.
ACT_GAIN: Final = 2**0.5
DEMOD_EPS: Final = 1e-8


def stylegan_channels(channel_multiplier: int, narrow: float) -> dict[int, int]:
    """Feature channels per resolution, as StyleGAN2 sizes its generator (the U-Net uses half of them)."""
    wide = {4: 512, 8: 512, 16: 512, 32: 512}
    tapered = {64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    out = {res: int(ch * narrow) for res, ch in wide.items()}
    out.update({res: int(ch * channel_multiplier * narrow) for res, ch in tapered.items()})
    return out


class ModulatedConv2d(nn.Module):
    """A convolution whose input channels are scaled per sample by an affine map of the style (no bias);
    `demodulate` renormalises each output filter. `upsample` doubles the input bilinearly first."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, style_dim: int, *, demodulate: bool = True, upsample: bool = False
    ) -> None:
        super().__init__()
        self.out_ch, self.kernel = out_ch, kernel
        self.demodulate, self.upsample = demodulate, upsample
        self.modulation = nn.Linear(style_dim, in_ch)
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel, kernel) / math.sqrt(in_ch * kernel**2))

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        batch, in_ch = x.shape[:2]
        weight = self.weight * self.modulation(style).view(batch, 1, in_ch, 1, 1)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4), keepdim=True) + DEMOD_EPS)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        height, width = x.shape[2:]
        # One grouped convolution runs every sample with its own filters.
        grouped = weight.reshape(batch * self.out_ch, in_ch, self.kernel, self.kernel)
        out = F.conv2d(x.reshape(1, batch * in_ch, height, width), grouped, padding=self.kernel // 2, groups=batch)
        return out.view(batch, self.out_ch, height, width)


class StyleConv(nn.Module):
    """Modulated 3×3 conv, scaled noise, bias, leaky ReLU (`weight` is the noise strength)."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, *, upsample: bool = False) -> None:
        super().__init__()
        self.modulated_conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, upsample=upsample)
        self.weight = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(1, out_ch, 1, 1))

    def forward(self, x: Tensor, style: Tensor, noise: Tensor) -> Tensor:
        out = self.modulated_conv(x, style) * ACT_GAIN + self.weight * noise + self.bias
        return F.leaky_relu(out, LRELU_SLOPE)


class ToRGB(nn.Module):
    """Modulated 1×1 conv to RGB, added to the (upsampled) running RGB image."""

    def __init__(self, in_ch: int, style_dim: int, *, upsample: bool = True) -> None:
        super().__init__()
        self.upsample = upsample
        self.modulated_conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out: Tensor = self.modulated_conv(x, style) + self.bias
        if skip is None:
            return out
        if self.upsample:
            skip = F.interpolate(skip, scale_factor=2.0, mode="bilinear", align_corners=False)
        return out + skip


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.weight.expand(batch, -1, -1, -1)


class NormStyleCode(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + DEMOD_EPS)


class StyleGAN2Decoder(nn.Module):
    """StyleGAN2's synthesis network with Spatial Feature Transform: after the first conv of each resolution,
    half of the channels (all with `sft_half` off) are scaled and shifted by the encoder's conditions."""

    def __init__(
        self, out_size: int, style_dim: int, num_mlp: int, channel_multiplier: int, narrow: float, sft_half: bool
    ) -> None:
        super().__init__()
        channels = stylegan_channels(channel_multiplier, narrow)
        self.sft_half = sft_half
        self.log_size = int(math.log2(out_size))
        self.num_latent = self.log_size * 2 - 2
        # Index 0 normalises; the linears sit at the odd indices, as in the published files.
        mlp: list[nn.Module] = [NormStyleCode()]
        for _ in range(num_mlp):
            mlp += [nn.Linear(style_dim, style_dim), nn.LeakyReLU(LRELU_SLOPE)]
        self.style_mlp = nn.Sequential(*mlp)
        self.constant_input = ConstantInput(channels[4], 4)
        self.style_conv1 = StyleConv(channels[4], channels[4], style_dim)
        self.to_rgb1 = ToRGB(channels[4], style_dim, upsample=False)
        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        num_layers = (self.log_size - 2) * 2 + 1
        for index in range(num_layers):
            side = 2 ** ((index + 5) // 2)
            self.noises.register_buffer(f"noise{index}", torch.randn(1, 1, side, side))
        in_ch = channels[4]
        for level in range(3, self.log_size + 1):
            out_ch = channels[2**level]
            self.style_convs.append(StyleConv(in_ch, out_ch, style_dim, upsample=True))
            self.style_convs.append(StyleConv(out_ch, out_ch, style_dim))
            self.to_rgbs.append(ToRGB(out_ch, style_dim))
            in_ch = out_ch

    def forward(self, latent: Tensor, conditions: list[Tensor]) -> Tensor:
        """`latent`: B×num_latent×style_dim (one style per layer); `conditions`: scale/shift pairs per level.
        The stored noise maps are used, so the same face restores the same way every time."""
        noises = [buffer for _, buffer in self.noises.named_buffers()]
        out = self.style_conv1(self.constant_input(latent.shape[0]), latent[:, 0], noises[0])
        skip = self.to_rgb1(out, latent[:, 1])
        index = 1
        for level, to_rgb in enumerate(self.to_rgbs):
            conv_up, conv = self.style_convs[2 * level], self.style_convs[2 * level + 1]
            out = conv_up(out, latent[:, index], noises[index])
            if 2 * level + 1 < len(conditions):
                scale, shift = conditions[2 * level], conditions[2 * level + 1]
                if self.sft_half:
                    kept, steered = torch.split(out, out.shape[1] // 2, dim=1)
                    out = torch.cat([kept, steered * scale + shift], dim=1)
                else:
                    out = out * scale + shift
            out = conv(out, latent[:, index + 1], noises[index + 1])
            skip = to_rgb(out, latent[:, index + 2], skip)
            index += 2
        image: Tensor = skip
        return image


class ResampleBlock(nn.Module):
    """Residual block that halves or doubles the resolution (bilinear) between its two convs."""

    def __init__(self, in_ch: int, out_ch: int, factor: float) -> None:
        super().__init__()
        self.factor = factor
        self.conv1 = nn.Conv2d(in_ch, in_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.leaky_relu(self.conv1(x), LRELU_SLOPE)
        out = F.interpolate(out, scale_factor=self.factor, mode="bilinear", align_corners=False)
        out = F.leaky_relu(self.conv2(out), LRELU_SLOPE)
        resized = F.interpolate(x, scale_factor=self.factor, mode="bilinear", align_corners=False)
        result: Tensor = out + self.skip(resized)
        return result


def _sft_branch(channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, 1, 1), nn.LeakyReLU(LRELU_SLOPE), nn.Conv2d(channels, out_channels, 3, 1, 1)
    )


class GFPGANv1Clean(nn.Module):
    """The published GFPGAN v1.3/v1.4 network (defaults: their configuration). Input and output are
    B×3×512×512 in [-1, 1]."""

    def __init__(
        self,
        out_size: int = 512,
        style_dim: int = 512,
        channel_multiplier: int = 2,
        num_mlp: int = 8,
        narrow: float = 1.0,
        sft_half: bool = True,
    ) -> None:
        super().__init__()
        self.out_size, self.style_dim = out_size, style_dim
        self.log_size = int(math.log2(out_size))
        unet = stylegan_channels(channel_multiplier, narrow * 0.5)
        self.conv_body_first = nn.Conv2d(3, unet[out_size], 1)
        self.conv_body_down = nn.ModuleList()
        in_ch = unet[out_size]
        for level in range(self.log_size, 2, -1):
            self.conv_body_down.append(ResampleBlock(in_ch, unet[2 ** (level - 1)], 0.5))
            in_ch = unet[2 ** (level - 1)]
        self.final_conv = nn.Conv2d(in_ch, unet[4], 3, 1, 1)
        self.conv_body_up = nn.ModuleList()
        self.toRGB = nn.ModuleList()  # the published name; these side outputs served training only
        self.condition_scale = nn.ModuleList()
        self.condition_shift = nn.ModuleList()
        in_ch = unet[4]
        for level in range(3, self.log_size + 1):
            out_ch = unet[2**level]
            self.conv_body_up.append(ResampleBlock(in_ch, out_ch, 2.0))
            self.toRGB.append(nn.Conv2d(out_ch, 3, 1))
            sft_out = out_ch if sft_half else out_ch * 2
            self.condition_scale.append(_sft_branch(out_ch, sft_out))
            self.condition_shift.append(_sft_branch(out_ch, sft_out))
            in_ch = out_ch
        # One style per decoder layer ("different_w"), read straight as latents.
        self.final_linear = nn.Linear(unet[4] * 4 * 4, (self.log_size * 2 - 2) * style_dim)
        self.stylegan_decoder = StyleGAN2Decoder(out_size, style_dim, num_mlp, channel_multiplier, narrow, sft_half)

    def forward(self, x: Tensor) -> Tensor:
        feat = F.leaky_relu(self.conv_body_first(x), LRELU_SLOPE)
        skips: list[Tensor] = []
        for down in self.conv_body_down:
            feat = down(feat)
            skips.insert(0, feat)
        feat = F.leaky_relu(self.final_conv(feat), LRELU_SLOPE)
        latent = self.final_linear(feat.flatten(1)).view(x.shape[0], -1, self.style_dim)
        conditions: list[Tensor] = []
        for skip, up, scale, shift in zip(
            skips, self.conv_body_up, self.condition_scale, self.condition_shift, strict=True
        ):
            feat = up(feat + skip)
            conditions += [scale(feat), shift(feat)]
        result: Tensor = self.stylegan_decoder(latent, conditions)
        return result
