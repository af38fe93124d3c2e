"""How many jobs a worker batches into one pipeline call: the `max_batch` setting, or an automatic size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from sdserver.engines.base import Engine

# CPUs gain little past a few images per call (the cores are busy either way) and each image costs memory.
CPU_MAX_BATCH: Final = 4
AUTO_MAX_BATCH: Final = 16
GIB: Final = 1024**3
# On CUDA: free memory kept for the weights of the models the worker will load, then this much per batched job
# (an SDXL 1024x1024 image's activations and VAE decode in fp16 stay under it).
CUDA_RESERVED_BYTES: Final = 8 * GIB
CUDA_BYTES_PER_JOB: Final = 2 * GIB


def resolve_max_batch(setting: int, device: str, free_bytes: int | None) -> int:
    """`setting` when set (>= 1); else 4 on a CPU, and on CUDA what the free memory (before any model is loaded)
    leaves room for, 1 to 16."""
    if setting >= 1:
        return setting
    if not device.startswith("cuda") or free_bytes is None:
        return CPU_MAX_BATCH
    return max(1, min(AUTO_MAX_BATCH, (free_bytes - CUDA_RESERVED_BYTES) // CUDA_BYTES_PER_JOB))


def worker_max_batch(setting: int, engines: Sequence[Engine]) -> int:
    """The batch size for a worker with these engines: from the first engine that batches (one with `batchable`),
    on its device; 1 when none does."""
    for engine in engines:
        placement = getattr(engine, "placement", None)
        if getattr(engine, "batchable", None) is None or placement is None:
            continue
        probe = getattr(engine, "device_free_bytes", None)
        free = probe() if probe is not None and setting < 1 else None
        return resolve_max_batch(setting, str(placement.device), free)
    return 1
