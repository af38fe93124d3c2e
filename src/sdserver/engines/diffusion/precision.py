"""Which device and dtype a worker runs models with: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import torch

PrecisionName = Literal["fp32", "bf16", "fp16"]
PrecisionSetting = Literal["auto", "fp32", "bf16", "fp16"]

DTYPES: Final[dict[PrecisionName, torch.dtype]] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
# CPU flags of a native bf16 dot product; without one, bf16 is emulated and slower than fp32.
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


def choose_device(device: str | None = None) -> str:
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def choose_placement(setting: PrecisionSetting = "auto", device: str | None = None) -> Placement:
    """The placement for a worker: `setting` forces a precision; `auto` picks the fastest safe one."""
    where = choose_device(device)
    if setting != "auto":
        return Placement(where, setting)
    if where.startswith("cuda"):
        return Placement(where, "fp16")
    return Placement(where, "bf16" if cpu_has_native_bf16() else "fp32")
