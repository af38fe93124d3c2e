"""Seeded random face-restorer weights, saved the way the official files are (a dict under `params_ema`), for
tests and for trying face_enhance without the real weights (the faces come out as random patterns)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from sdserver.engines.restore.gfpgan_arch import ModulatedConv2d
from sdserver.engines.restore.restorer import WEIGHT_STEMS, RestorerName, build_network


def seeded_state_dict(name: RestorerName, seed: int = 0) -> dict[str, Tensor]:
    """The full-size network of `name` with seeded weights: PyTorch's default initialisation, and the GFPGAN
    style modulations biased to 1 (as StyleGAN2 starts training), so every layer passes signal."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_network(name)
        with torch.no_grad():
            for module in network.modules():
                if isinstance(module, ModulatedConv2d):
                    nn.init.ones_(module.modulation.bias)
    return {key: value.detach().contiguous() for key, value in network.state_dict().items()}


def write_restorer_weights(folder: Path, name: RestorerName, seed: int = 0) -> Path:
    """`<folder>/<official file name>.pth` with seeded weights of `name` under `params_ema`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{WEIGHT_STEMS[name]}.pth"
    torch.save({"params_ema": seeded_state_dict(name, seed)}, path)
    return path
