"""`FaceRestorer`: a GFPGAN or CodeFormer network loaded strictly from its official weight file, restoring
aligned 512×512 face crops on the engine's device and precision."""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal, get_args

import numpy as np
import torch
from torch import nn

from sdserver.engines.precision import Placement, PrecisionSetting, choose_placement
from sdserver.engines.restore.align import Pixels
from sdserver.engines.restore.codeformer_arch import CodeFormer
from sdserver.engines.restore.gfpgan_arch import GFPGANv1Clean
from sdserver.engines.state_dicts import find_weights, load_strict, read_state_dict

RestorerName = Literal["gfpgan-1.4", "gfpgan-1.3", "codeformer"]
RESTORER_NAMES: Final[tuple[RestorerName, ...]] = get_args(RestorerName)
DEFAULT_RESTORER: Final[RestorerName] = "gfpgan-1.4"
# The published file names (without suffix); a `.safetensors` conversion of the same name is preferred.
WEIGHT_STEMS: Final[dict[RestorerName, str]] = {
    "gfpgan-1.4": "GFPGANv1.4",
    "gfpgan-1.3": "GFPGANv1.3",
    "codeformer": "codeformer",
}
FOLDER_NAME: Final = "face_restorers"
DEFAULT_FIDELITY: Final = 0.5


class RestorerWeightsMissingError(FileNotFoundError):
    """No weight file for the configured restorer; the message names where it must go."""


def restorer_folder(models_dir: Path) -> Path:
    return models_dir / FOLDER_NAME


def build_network(name: RestorerName) -> nn.Module:
    """The untrained network of `name`, in the published configuration."""
    return CodeFormer() if name == "codeformer" else GFPGANv1Clean()


def describe(name: RestorerName) -> str:
    return "CodeFormer (512px)" if name == "codeformer" else "GFPGANv1Clean (512px, channel multiplier 2)"


def restorer_placement(precision: PrecisionSetting, device: torch.device | str | None) -> Placement:
    """The engines' placement, except fp16: both networks overflow in it (their normalisations sum squares of
    large activations), so they run in bf16 where the device has it, else fp32."""
    placement = choose_placement(precision, device)
    if placement.precision != "fp16":
        return placement
    cuda = placement.device.startswith("cuda") and torch.cuda.is_available()
    return Placement(placement.device, "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32")


class FaceRestorer:
    """Restores batches of aligned faces. `fidelity` (CodeFormer only): 0 trusts the learned face prior most,
    1 keeps closest to the input."""

    def __init__(
        self,
        name: RestorerName,
        network: nn.Module,
        *,
        device: torch.device | str | None = None,
        precision: PrecisionSetting = "auto",
        fidelity: float = DEFAULT_FIDELITY,
    ) -> None:
        placement = restorer_placement(precision, device)
        self.name, self.precision, self.fidelity = name, placement.precision, fidelity
        self._device, self._dtype = torch.device(placement.device), placement.dtype
        self._network = network.to(self._device, self._dtype).eval().requires_grad_(False)

    def restore(self, crops: list[Pixels]) -> list[Pixels]:
        """Each 512×512×3 uint8 RGB crop restored, one network pass per face (they are large)."""
        return [self._restore_one(crop) for crop in crops]

    @torch.inference_mode()
    def _restore_one(self, crop: Pixels) -> Pixels:
        pixels = torch.from_numpy(np.ascontiguousarray(crop)).to(self._device)
        batch = pixels.permute(2, 0, 1)[None].to(self._dtype) / 127.5 - 1.0
        extra = {"fidelity": self.fidelity} if self.name == "codeformer" else {}
        out = self._network(batch, **extra)
        rgb = ((out[0].float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
        return np.ascontiguousarray(rgb.permute(1, 2, 0).cpu().numpy())


def weights_path(folder: Path, name: RestorerName) -> Path:
    """The restorer's weight file, or RestorerWeightsMissingError naming the file expected."""
    stem = WEIGHT_STEMS[name]
    path = find_weights(folder, stem)
    if path is None:
        raise RestorerWeightsMissingError(
            f"face_enhance uses the {name} face restorer, whose weights are missing: put the official {stem}.pth "
            f"(or {stem}.safetensors) in {folder.resolve()}/ (SDSERVER_FACE_RESTORER picks the restorer), "
            "or send face_enhance: no"
        )
    return path


def load_restorer(
    path: Path,
    name: RestorerName,
    *,
    device: torch.device | str | None = None,
    precision: PrecisionSetting = "auto",
    fidelity: float = DEFAULT_FIDELITY,
) -> FaceRestorer:
    """The restorer in `path`, loaded strictly (UnsupportedWeightsError when it is another layout)."""
    network = load_strict(build_network(name), read_state_dict(path), path.name, describe(name))
    return FaceRestorer(name, network, device=device, precision=precision, fidelity=fidelity)
