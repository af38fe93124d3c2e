"""Which device and number format every engine runs in: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

import torch

PrecisionName = Literal["fp32", "bf16", "fp16"]
PrecisionSetting = Literal["auto", "fp32", "bf16", "fp16"]

PRECISION_SETTINGS: Final = frozenset(get_args(PrecisionSetting))
DTYPES: Final[dict[PrecisionName, torch.dtype]] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
# CPU flags of a native bf16 dot product; without one, torch emulates bf16 and it is slower than fp32.
NATIVE_BF16_FLAGS: Final = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO: Final = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Placement:
    """Where a model's weights live and in which precision (what `meta.precision` reports)."""

    device: str
    precision: PrecisionName

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU flags (from /proc/cpuinfo unless given) include AVX512-BF16 or AMX-BF16."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and NATIVE_BF16_FLAGS & set(value.split()):
            return True
    return False


def choose_device(device: str | torch.device | None = None) -> str:
    if device:
        return str(device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def choose_placement(setting: PrecisionSetting = "auto", device: str | torch.device | None = None) -> Placement:
    """The placement for an engine: `setting` forces a precision; `auto` picks the fastest safe one (its error
    stays well under a grey level)."""
    if setting not in PRECISION_SETTINGS:
        raise ValueError(f"precision must be one of {sorted(PRECISION_SETTINGS)}, got {setting!r}")
    where = choose_device(device)
    if setting != "auto":
        return Placement(where, setting)
    if where.startswith("cuda"):
        return Placement(where, "fp16")
    if where.startswith("cpu") and cpu_has_native_bf16():
        return Placement(where, "bf16")
    return Placement(where, "fp32")
