"""The Real-ESRGAN network architectures (RRDBNet, SRVGGNetCompact), named so the published weights load strictly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ArchName = Literal["rrdb", "srvgg"]
ActType = Literal["prelu", "relu", "leakyrelu"]

# The published networks scale their residual branches by 0.2 (ESRGAN's residual scaling).
RESIDUAL_SCALE: Final = 0.2
LRELU_SLOPE: Final = 0.2


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3×3 convolutions; the fifth maps back to `num_feat` channels."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        x1 = F.leaky_relu(self.conv1(x), LRELU_SLOPE)
        x2 = F.leaky_relu(self.conv2(torch.cat((x, x1), 1)), LRELU_SLOPE)
        x3 = F.leaky_relu(self.conv3(torch.cat((x, x1, x2), 1)), LRELU_SLOPE)
        x4 = F.leaky_relu(self.conv4(torch.cat((x, x1, x2, x3), 1)), LRELU_SLOPE)
        x5: Tensor = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * RESIDUAL_SCALE + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks under one scaled skip."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.rdb3(self.rdb2(self.rdb1(x)))
        return out * RESIDUAL_SCALE + x


class RRDBNet(nn.Module):
    """ESRGAN's generator. It always upsamples 4× internally; the 2× and 1× variants first pixel-unshuffle
    their input (into 4× and 16× the channels), which is why their input sides must be multiples of 2 and 4."""

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
    ) -> None:
        super().__init__()
        if scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet scale must be 1, 2 or 4, got {scale}")
        self.scale = scale
        self.unshuffle = {4: 1, 2: 2, 1: 4}[scale]
        self.conv_first = nn.Conv2d(num_in_ch * self.unshuffle**2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    @property
    def input_multiple(self) -> int:
        return self.unshuffle

    def forward(self, x: Tensor) -> Tensor:
        feat = F.pixel_unshuffle(x, self.unshuffle) if self.unshuffle > 1 else x
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2.0, mode="nearest")), LRELU_SLOPE)
        feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2.0, mode="nearest")), LRELU_SLOPE)
        out: Tensor = self.conv_last(F.leaky_relu(self.conv_hr(feat), LRELU_SLOPE))
        return out


def _activation(act_type: ActType, num_feat: int) -> nn.Module:
    if act_type == "prelu":
        return nn.PReLU(num_parameters=num_feat)
    if act_type == "relu":
        return nn.ReLU(inplace=True)
    return nn.LeakyReLU(negative_slope=0.1, inplace=True)


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact network: a plain conv/activation stack at low resolution, a pixel shuffle, and the
    nearest-upsampled input added back. Layers live in `body` at the published indices (conv, act, conv, ...)."""

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_conv: int = 16,
        upscale: int = 4,
        act_type: ActType = "prelu",
    ) -> None:
        super().__init__()
        self.scale = upscale
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), _activation(act_type, num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), _activation(act_type, num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(upscale)

    @property
    def input_multiple(self) -> int:
        return 1

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        out = self.upsampler(out)
        # The network learns only the residual over a nearest-neighbour upscale.
        result: Tensor = out + F.interpolate(x, scale_factor=float(self.scale), mode="nearest")
        return result


@dataclass(frozen=True)
class ArchSpec:
    """One network configuration; `build` makes it with fresh (untrained) weights."""

    arch: ArchName
    scale: int
    num_feat: int = 64
    num_block: int = 23
    num_grow_ch: int = 32
    num_conv: int = 32
    num_in_ch: int = 3
    num_out_ch: int = 3

    def build(self) -> nn.Module:
        if self.arch == "rrdb":
            return RRDBNet(self.num_in_ch, self.num_out_ch, self.scale, self.num_feat, self.num_block, self.num_grow_ch)
        return SRVGGNetCompact(self.num_in_ch, self.num_out_ch, self.num_feat, self.num_conv, self.scale)

    def describe(self) -> str:
        if self.arch == "rrdb":
            return f"RRDBNet x{self.scale} ({self.num_block} blocks, {self.num_feat} features)"
        return f"SRVGGNetCompact x{self.scale} ({self.num_conv} convs, {self.num_feat} features)"


# The published models, by the ids the API uses (and their weight files are named after).
OFFICIAL_MODELS: Final[dict[str, ArchSpec]] = {
    "RealESRGAN_x4plus": ArchSpec("rrdb", 4, num_block=23),
    "RealESRNet_x4plus": ArchSpec("rrdb", 4, num_block=23),
    "RealESRGAN_x4plus_anime_6B": ArchSpec("rrdb", 4, num_block=6),
    "RealESRGAN_x2plus": ArchSpec("rrdb", 2, num_block=23),
    "realesr-general-x4v3": ArchSpec("srvgg", 4, num_conv=32),
}
DEFAULT_MODEL_ID: Final = "realesr-general-x4v3"
