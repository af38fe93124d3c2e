"""Read Real-ESRGAN weight files (.pth in any published layout, .safetensors), recognise the network, load it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from torch import Tensor, nn

from sdserver.engines.state_dicts import (
    WEIGHT_SUFFIXES,
    UnsupportedWeightsError,
    find_weights,
    load_strict,
    read_state_dict,
)
from sdserver.engines.upscale.archs import ArchSpec

# Re-exported: the upscale engine and its tests import them from here.
__all__ = [
    "UnsupportedWeightsError", "build_network", "detect_arch", "find_weights", "list_weight_ids", "load_network",
    "read_state_dict",
]  # fmt: skip

# RRDBNet's first conv sees the input pixel-unshuffled: in-channels ÷ out-channels gives the native scale.
_RRDB_SCALE_BY_CHANNEL_RATIO: Final = {1: 4, 4: 2, 16: 1}
_RRDB_BLOCK = re.compile(r"body\.(\d+)\.rdb1\.conv1\.weight")
_BODY_PARAM = re.compile(r"body\.(\d+)\.weight")
RGB: Final = 3


def detect_arch(state: Mapping[str, Tensor], name: str = "the weights") -> ArchSpec:
    """Recognise RRDBNet or SRVGGNetCompact, and their sizes and native scale, from parameter names and shapes."""
    if "conv_first.weight" in state:
        return _detect_rrdb(state, name)
    if "body.0.weight" in state:
        return _detect_srvgg(state, name)
    sample = ", ".join(sorted(state)[:4])
    raise UnsupportedWeightsError(
        f"{name} match no known upscaler architecture (RRDBNet or SRVGGNetCompact); first keys: {sample}"
    )


def _detect_rrdb(state: Mapping[str, Tensor], name: str) -> ArchSpec:
    first, last = state["conv_first.weight"], state.get("conv_last.weight")
    blocks = {int(m[1]) for key in state if (m := _RRDB_BLOCK.fullmatch(key))}
    if first.ndim != 4 or last is None or last.ndim != 4 or not blocks or blocks != set(range(len(blocks))):
        raise UnsupportedWeightsError(f"{name} look like RRDBNet but lack its conv_last or numbered body blocks")
    out_ch, in_ch = int(last.shape[0]), int(first.shape[1])
    scale = _RRDB_SCALE_BY_CHANNEL_RATIO.get(in_ch // out_ch) if in_ch % out_ch == 0 else None
    if scale is None:
        raise UnsupportedWeightsError(
            f"{name}: RRDBNet with {in_ch} input and {out_ch} output channels has no known scale"
        )
    grow = int(state["body.0.rdb1.conv1.weight"].shape[0])
    return ArchSpec(
        "rrdb", scale, num_feat=int(first.shape[0]), num_block=len(blocks), num_grow_ch=grow,
        num_in_ch=out_ch, num_out_ch=out_ch,
    )  # fmt: skip


def _detect_srvgg(state: Mapping[str, Tensor], name: str) -> ArchSpec:
    params = {int(m[1]): state[key] for key in state if (m := _BODY_PARAM.fullmatch(key))}
    convs = sorted(index for index, value in params.items() if value.ndim == 4)
    # Published compact models use PReLU, whose per-channel slopes sit between the convs. ReLU and LeakyReLU
    # leave no parameters, so they cannot be told apart from the file: refuse rather than guess.
    if len(convs) < 2 or 1 not in params or params[1].ndim != 1:
        raise UnsupportedWeightsError(f"{name} look like SRVGGNetCompact but without PReLU activations")
    first, last = params[convs[0]], params[convs[-1]]
    in_ch, out_total = int(first.shape[1]), int(last.shape[0])
    upscale = round((out_total / in_ch) ** 0.5) if out_total % in_ch == 0 else 0
    if upscale < 1 or in_ch * upscale * upscale != out_total:
        raise UnsupportedWeightsError(f"{name}: a last conv with {out_total} channels is no pixel-shuffle upscale")
    return ArchSpec(
        "srvgg", upscale, num_feat=int(first.shape[0]), num_conv=len(convs) - 2, num_in_ch=in_ch, num_out_ch=in_ch
    )


def build_network(state: Mapping[str, Tensor], name: str = "the weights") -> tuple[nn.Module, ArchSpec]:
    """The recognised network with `state` loaded strictly (every name and shape must match), ready to infer."""
    spec = detect_arch(state, name)
    if spec.num_in_ch != RGB:
        raise UnsupportedWeightsError(f"{name}: {spec.describe()} takes {spec.num_in_ch} channels; only RGB is run")
    network = load_strict(spec.build(), state, name, spec.describe())
    return network, spec


def load_network(path: Path) -> tuple[nn.Module, ArchSpec]:
    return build_network(read_state_dict(path), path.name)


def list_weight_ids(folder: Path) -> set[str]:
    """Model ids with a weight file in `folder` (an absent folder has none)."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return set()
    return {entry.stem for entry in entries if entry.suffix in WEIGHT_SUFFIXES and entry.is_file()}
