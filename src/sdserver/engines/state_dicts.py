"""Weight files shared by the small-network engines: read a state dict from `.pth` (any published wrapping) or
`.safetensors` without running pickled code, find a model's file, and load a network strictly."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import torch
from torch import Tensor, nn

WEIGHT_SUFFIXES: Final = (".safetensors", ".pth")
# Training checkpoints keep the EMA weights (the better ones) beside the raw ones; the published files do too.
STATE_DICT_KEYS: Final = ("params_ema", "params")

StateDict = dict[str, Tensor]


class UnsupportedWeightsError(ValueError):
    """The file is not a state dict of a network this server knows (or not a weight file at all)."""


def read_state_dict(path: Path, keys: tuple[str, ...] = STATE_DICT_KEYS) -> StateDict:
    """The tensors of a weight file: under the first of `keys` present, else the top level (.pth), or the whole
    file (.safetensors). Pickles load with `weights_only`, so a hostile file cannot run code."""
    raw: object
    if path.suffix == ".safetensors":
        raw = _read_safetensors(path)
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError) as exc:
            raise UnsupportedWeightsError(f"{path.name} is not a readable PyTorch weight file ({exc})") from None
    if not isinstance(raw, Mapping):
        raise UnsupportedWeightsError(f"{path.name} holds a {type(raw).__name__}, not a state dict")
    for key in keys:
        nested = raw.get(key)
        if isinstance(nested, Mapping):
            raw = nested
            break
    tensors = {str(name): value for name, value in raw.items() if isinstance(value, Tensor)}
    if not tensors:
        raise UnsupportedWeightsError(f"{path.name} holds no tensors")
    # Checkpoints saved from DataParallel prefix every name with `module.`.
    if all(name.startswith("module.") for name in tensors):
        tensors = {name.removeprefix("module."): value for name, value in tensors.items()}
    return tensors


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UnsupportedWeightsError(f"{path.name} is not a readable safetensors file ({exc})") from None


def load_strict(network: nn.Module, state: Mapping[str, Tensor], name: str, describe: str) -> nn.Module:
    """`network` with `state` loaded strictly (every name and shape must match), in eval mode without grads."""
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = str(exc).splitlines()[1:3]
        raise UnsupportedWeightsError(
            f"{name} do not fit {describe}: {' '.join(part.strip() for part in detail)}"
        ) from None
    return network.eval().requires_grad_(False)


def find_weights(folder: Path, model_id: str) -> Path | None:
    """`<model_id>.safetensors` (preferred: no pickle) or `<model_id>.pth` in `folder`."""
    for suffix in WEIGHT_SUFFIXES:
        path = folder / f"{model_id}{suffix}"
        if path.is_file():
            return path
    return None
