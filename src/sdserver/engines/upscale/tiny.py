"""Seeded random Real-ESRGAN weights written in the published file layouts, for tests and benchmarks."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from sdserver.engines.upscale.archs import OFFICIAL_MODELS, ArchSpec

Layout = Literal["params_ema", "params", "bare", "safetensors"]
LAYOUTS: tuple[Layout, ...] = ("params_ema", "params", "bare", "safetensors")
# Output spread the calibration aims for: an RRDBNet paints around mid-grey, a compact net adds a residual to
# the upsampled input. Either way the output is a busy image, neither flat nor clipped, so that comparisons of
# tiled vs whole or bf16 vs fp32 measure something.
RRDB_OUTPUT_STD = 0.2
SRVGG_RESIDUAL_STD = 0.05


def seeded_state_dict(spec: ArchSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    """Parameters for `spec`, the same for the same seed: He-initialised convs (the dense blocks scaled by 0.1,
    as Real-ESRGAN's own training starts), and a last conv calibrated on a fixed input to the spreads above.
    A new dict each call (tensors shared and never modified), so callers may add or drop entries."""
    return dict(_seeded_state_dict(spec, seed))


@functools.cache
def _seeded_state_dict(spec: ArchSpec, seed: int) -> dict[str, torch.Tensor]:
    # Cached: building and calibrating a 23-block RRDBNet costs about a second, and tests ask for it often.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = spec.build().eval()
        convs = [(name, module) for name, module in network.named_modules() if isinstance(module, nn.Conv2d)]
        with torch.no_grad():
            for name, conv in convs:
                assert conv.bias is not None  # every Real-ESRGAN conv has one
                nn.init.kaiming_normal_(conv.weight, a=0.2)
                nn.init.uniform_(conv.bias, -0.02, 0.02)
                if ".rdb" in name:
                    conv.weight.mul_(0.1)
            _calibrate(network, spec, convs[-1][1], torch.rand(1, spec.num_in_ch, 8, 8))
    return {name: tensor.detach().clone().contiguous() for name, tensor in network.state_dict().items()}


def _calibrate(network: nn.Module, spec: ArchSpec, last: nn.Conv2d, seed_image: torch.Tensor) -> None:
    image = nn.functional.interpolate(seed_image, size=(32, 32), mode="bicubic", align_corners=False).clamp(0, 1)
    assert last.bias is not None
    last.bias.zero_()
    output = network(image)
    if spec.arch == "rrdb":
        last.weight.mul_(RRDB_OUTPUT_STD / output.std())
        last.bias.fill_(0.5)
    else:
        residual = output - nn.functional.interpolate(image, scale_factor=float(spec.scale), mode="nearest")
        last.weight.mul_(SRVGG_RESIDUAL_STD / residual.std())


def write_official_weights(folder: Path, model_id: str, layout: Layout = "params_ema", seed: int = 0) -> Path:
    """`<folder>/<model_id>.pth|.safetensors` holding random weights of that model's architecture, saved the way
    the published files are: a dict under `params_ema` (RealESRGAN_*) or `params` (realesr-general-x4v3), a bare
    state dict, or a safetensors file."""
    return write_weights(folder, model_id, OFFICIAL_MODELS[model_id], layout, seed)


def write_weights(folder: Path, model_id: str, spec: ArchSpec, layout: Layout = "params_ema", seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    state = seeded_state_dict(spec, seed)
    if layout == "safetensors":
        from safetensors.torch import save_file

        path = folder / f"{model_id}.safetensors"
        save_file(state, str(path))
        return path
    path = folder / f"{model_id}.pth"
    torch.save(state if layout == "bare" else {layout: state}, path)
    return path
