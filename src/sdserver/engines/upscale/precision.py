"""Which device and number format the upscaler runs in: fp16 on CUDA, bf16 on CPUs that do it natively, else fp32."""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Final, Literal, get_args

import torch

PrecisionChoice = Literal["auto", "fp32", "bf16", "fp16"]
PrecisionName = Literal["fp32", "bf16", "fp16"]

PRECISION_CHOICES: Final = frozenset(get_args(PrecisionChoice))
DTYPES: Final[dict[PrecisionName, torch.dtype]] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# CPU flags for native bf16 dot products. Without them torch emulates bf16, which is slower than fp32.
NATIVE_BF16_FLAGS: Final = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO: Final = Path("/proc/cpuinfo")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True on x86 Linux CPUs that advertise AVX512-BF16 or AMX-BF16 (read once from /proc/cpuinfo)."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        text = CPUINFO.read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return not NATIVE_BF16_FLAGS.isdisjoint(line.partition(":")[2].split())
    return False


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def choose_precision(device: torch.device | str) -> torch.dtype:
    """The fastest format whose error stays well under a grey level: fp16 on CUDA, bf16 on native-bf16 CPUs."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.float16
    if kind == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def resolve_precision(choice: PrecisionChoice, device: torch.device | str) -> torch.dtype:
    """`auto` picks with `choose_precision`; an explicit choice is honoured as asked."""
    if choice not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {sorted(PRECISION_CHOICES)}, got {choice!r}")
    return choose_precision(device) if choice == "auto" else DTYPES[choice]


def precision_name(dtype: torch.dtype) -> PrecisionName:
    for name, candidate in DTYPES.items():
        if candidate == dtype:
            return name
    raise ValueError(f"not an upscaler precision: {dtype}")
