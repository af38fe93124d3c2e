"""The diffusers engine: text2img, img2img, inpaint and ControlNet on models from the data dir, with an LRU of
loaded models bounded by count and by the device's free memory."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

import torch

from sdserver.batch_keys import batch_key, is_solo
from sdserver.catalog.families import ModelFamily
from sdserver.catalog.families.capabilities import model_capabilities
from sdserver.catalog.ids import is_valid_model_id
from sdserver.catalog.layout import ModelSource, find_model, list_models, models_dir_for
from sdserver.catalog.registry import ModelKind
from sdserver.engines.base import DeviceFailure, DeviceOutOfMemory, EngineOutput, JobFailed, StepContext
from sdserver.engines.diffusion.acceleration import allow_tf32, tile_vae_for
from sdserver.engines.diffusion.batching import batch_groups, run_batch
from sdserver.engines.diffusion.controlnet import ControlNetCache, run_controlnet_job
from sdserver.engines.diffusion.families import check_kind, detect_model
from sdserver.engines.diffusion.footprint import WEIGHT_SUFFIXES, estimate_weight_bytes
from sdserver.engines.diffusion.loader import LoadedModel, load_model
from sdserver.engines.diffusion.passes import PassRunner
from sdserver.engines.diffusion.pipelines import run_job
from sdserver.engines.diffusion.refiner import NOT_INSTALLED, RefinerPlan, find_refiner_id
from sdserver.engines.lru import FingerprintLRU
from sdserver.engines.model_files import ModelFiles
from sdserver.engines.precision import Placement, PrecisionSetting, choose_placement
from sdserver.engines.upscale.engine import UpscaleEngine
from sdserver.errors import JobErrorCode
from sdserver.job_params import GenerationParams
from sdserver.jobs import Job, JobKind

if TYPE_CHECKING:
    from sdserver.config import Settings
    from sdserver.objects.base import ObjectStore

log = logging.getLogger(__name__)

KINDS: Final = frozenset({JobKind.TEXT2IMG, JobKind.IMG2IMG, JobKind.INPAINT, JobKind.CONTROLNET})
# The worker asks for models() on every claim (several times a second when idle): rescan the disk at most this often.
MODELS_SCAN_TTL_S: Final = 2.0
# Free memory kept beyond a model's own size when deciding what to evict: activations, VAE decode, the OS.
MIN_HEADROOM_BYTES: Final = 512 * 1024 * 1024
__all__ = [
    "WEIGHT_SUFFIXES",
    "DiffusionEngine",
    "family_placement",
    "free_device_memory",
    "host_available_memory",
    "model_footprint",
]

# Free bytes on the engine's device now, or None when it cannot be told.
MemoryProbe = Callable[[], int | None]


class DiffusionEngine:
    """Serves diffusers models from the models folder (pulled into it from the object store when published there).
    Keeps up to `max_loaded` models in memory, fewer when the device lacks room for the next one (least recently
    used goes first); one loaded model serves every kind with the same weights."""

    name: str = "diffusers"

    def __init__(
        self,
        settings: Settings,
        objects: ObjectStore,
        *,
        max_loaded: int = 1,
        precision: PrecisionSetting = "auto",
        device: str | None = None,
        memory_probe: MemoryProbe | None = None,
        files: ModelFiles | None = None,
    ) -> None:
        if max_loaded < 1:
            raise ValueError(f"max_loaded must be at least 1, got {max_loaded}")
        self._models_dir = models_dir_for(settings)
        self._nsfw_threshold = settings.nsfw_threshold
        self._objects = objects
        self.placement: Placement = choose_placement(precision, device)
        self._precision_setting: PrecisionSetting = precision
        self._compile_backend = settings.torch_compile
        self._vae_tile_pixels = settings.vae_tile_pixels
        allow_tf32(self.placement.device)
        self._free_bytes = memory_probe or (lambda: free_device_memory(self.placement.device))
        self._loaded: FingerprintLRU[str, LoadedModel] = FingerprintLRU(max_loaded)
        # The SDXL refiner, held apart from the models it refines so that loading it never evicts the base.
        self._refiner_setting = settings.sdxl_refiner
        self._refiners: FingerprintLRU[str, LoadedModel] = FingerprintLRU(1)
        self._scan: tuple[float, frozenset[str]] = (float("-inf"), frozenset())
        self._controlnets = ControlNetCache(self._models_dir, self.placement)
        self._files = files or ModelFiles(settings, objects)
        # The `upscale` generation pass chains the super-resolution engine (its weight folder, its cache).
        self._passes = PassRunner(
            UpscaleEngine(settings, objects, device=self.placement.device, precision=precision, files=self._files)
        )
        _quiet_libraries()

    def kinds(self) -> Collection[JobKind]:
        return KINDS

    def handles(self, job: Job) -> bool:
        # Not "on disk now": a model deleted after the claim still reaches run(), which fails it as not found.
        return job.kind in KINDS and is_valid_model_id(job.model_id)

    def models(self) -> Collection[str] | None:
        now = time.monotonic()
        checked_at, ids = self._scan
        if now - checked_at >= MODELS_SCAN_TTL_S:
            on_disk = frozenset(source.model_id for source in list_models(self._models_dir))
            ids = on_disk | self._files.published(ModelKind.CHECKPOINT)
            self._scan = (now, ids)
        return ids

    def batchable(self, job: Job) -> bool:
        """May this job share a pipeline call with others (its batch key is not a solo one)? The worker waits for
        batch-mates only for these."""
        return job.kind in KINDS and not is_solo(batch_key(job.kind.value, job.params, unique=f"job:{job.id}"))

    def device_free_bytes(self) -> int | None:
        """Free memory on the engine's device now (None: unknown)."""
        return self._free_bytes()

    def held_models(self) -> Collection[str]:
        return self._loaded.keys()

    def clear(self) -> None:
        self._loaded.clear()
        self._refiners.clear()
        self._controlnets.clear()
        self._passes.clear()
        _free_memory()

    def run(self, jobs: Sequence[Job], ctx: Callable[[Job], StepContext]) -> list[EngineOutput]:
        if not jobs:
            return []
        for job in jobs:
            # A cancel that arrived while queued stops the job before any loading.
            ctx(job).step(0, job.steps)
        for job in jobs:
            # Files of models loaded on another box come from the object store before anything reads them.
            self._files.ensure_job(job)
        try:
            model = self._model(jobs[0].model_id, {job.kind for job in jobs})
            return self._run_groups(model, jobs, ctx)
        except torch.OutOfMemoryError:
            pass
        except torch.AcceleratorError as exc:
            # A device error other than memory (illegal access, lost device): the process must restart.
            raise DeviceFailure(f"{self.placement.device} failed running model {jobs[0].model_id}: {exc}") from exc
        # Outside the except block, so the traceback no longer pins this run's tensors when memory is freed.
        _free_memory()
        raise DeviceOutOfMemory(f"out of memory on {self.placement.device} running model {jobs[0].model_id}")

    def _run_groups(
        self, model: LoadedModel, jobs: Sequence[Job], ctx: Callable[[Job], StepContext]
    ) -> list[EngineOutput]:
        """Jobs that share a batch key run as one pipeline call (batching.py), the rest one by one; `meta.batch_size`
        says how many jobs shared each one's forward passes."""
        outputs: dict[int, EngineOutput] = {}
        # Every pipeline of the model (ControlNet's too) shares one VAE: each group's final size decides its mode.
        any_pipeline = next(iter(model.pipelines.values()))
        for group in batch_groups(jobs):
            tile_vae_for(any_pipeline, group[0].width, group[0].height, self._vae_tile_pixels)
            if len(group) > 1:
                done = run_batch(
                    model, group, self._objects, ctx, models_dir=self._models_dir, nsfw_threshold=self._nsfw_threshold
                )
            else:
                alone = self._run_one(model, group[0], ctx(group[0]))
                done = [EngineOutput(images=alone.images, meta=alone.meta | {"batch_size": 1})]
            outputs.update(zip((job.id for job in group), done, strict=True))
        return [outputs[job.id] for job in jobs]

    def _run_one(self, model: LoadedModel, job: Job, ctx: StepContext) -> EngineOutput:
        if job.kind is JobKind.CONTROLNET:
            return run_controlnet_job(
                model,
                job,
                self._objects,
                ctx,
                self._controlnets,
                models_dir=self._models_dir,
                nsfw_threshold=self._nsfw_threshold,
            )
        refiner = None
        if job.params_as(GenerationParams).refiner and model.family is ModelFamily.SDXL:
            refiner = self._refiner(model.model_id)
        return run_job(
            model,
            job,
            self._objects,
            ctx,
            models_dir=self._models_dir,
            nsfw_threshold=self._nsfw_threshold,
            refiner=refiner,
            passes=self._passes,
        )

    def _model(self, model_id: str, kinds: Collection[JobKind] = ()) -> LoadedModel:
        source = find_model(self._models_dir, model_id)
        if source is None:
            self._forget(model_id)
            raise JobFailed(JobErrorCode.MODEL_NOT_FOUND, "Model id not found")
        cached = self._loaded.get(model_id, source.fingerprint())
        if cached is not None:
            return cached
        # Detect first, evict later: a model no pipeline here runs (or one that cannot serve these jobs) fails its
        # jobs before anything loaded is given up for it.
        info = detect_model(source)
        for kind in kinds:
            check_kind(model_id, info, model_capabilities(info), kind)
        # Not loaded, or its files were replaced since it was.
        self._forget(model_id)
        placement = family_placement(self.placement, self._precision_setting, info.family)
        self._make_room(model_footprint(source, placement))
        log.info(
            "loading %s model %s from %s (%s on %s)",
            info.family.value,
            model_id,
            source.path,
            placement.precision,
            placement.device,
        )
        model = load_model(source, placement, info, compile_backend=self._compile_backend)
        self._loaded.put(model_id, model.fingerprint, model)
        return model

    def _refiner(self, base_id: str) -> RefinerPlan:
        """The installed SDXL refiner, loaded (and kept) beside the base model; a plan without one when none is
        installed. Room for it is made by unloading other models, never the base it refines."""
        refiner_id, note = find_refiner_id(self._models_dir, self._refiner_setting)
        source = find_model(self._models_dir, refiner_id) if refiner_id else None
        if refiner_id is None or source is None:
            return RefinerPlan(None, note)
        cached = self._refiners.get(refiner_id, source.fingerprint())
        if cached is not None:
            return RefinerPlan(cached, note)
        info = detect_model(source)
        if info.family is not ModelFamily.SDXL_REFINER:
            log.warning("refiner %s is a %s model, not an SDXL refiner", refiner_id, info.family.value)
            return RefinerPlan(None, f"{NOT_INSTALLED}: {refiner_id} is a {info.family.value} model")
        self._refiners.clear()
        _free_memory()
        self._make_room(model_footprint(source, self.placement), keep=base_id)
        log.info("loading SDXL refiner %s from %s", refiner_id, source.path)
        model = load_model(source, self.placement, info)
        self._refiners.put(refiner_id, model.fingerprint, model)
        return RefinerPlan(model, note)

    def _make_room(self, needed: int, keep: str | None = None) -> None:
        """Evict before loading, least recently used first, until the count limit leaves a slot and the device's
        free memory fits the new model plus headroom; two models never sit in memory beyond either limit."""
        headroom = needed + max(MIN_HEADROOM_BYTES, needed // 4)
        while len(self._loaded):
            # `keep` (the base a refiner joins) takes no slot of the count limit: only memory can push others out.
            full = keep is None and self._loaded.is_full()
            if not full:
                free = self._free_bytes()
                if free is None or free >= headroom:
                    return
            victim = next((model.model_id for model in self._loaded.values() if model.model_id != keep), None)
            if victim is None:
                return
            self._loaded.pop(victim)
            log.info("unloading model %s to make room (%s)", victim, "count limit" if full else "memory")
            _free_memory()

    def _forget(self, model_id: str) -> None:
        dropped = self._loaded.pop(model_id)
        if dropped is not None:
            del dropped
            _free_memory()


def model_footprint(source: ModelSource, placement: Placement) -> int:
    """Bytes loading the model will take: every component's weights (text encoders and T5 included) at the
    placement's precision."""
    return estimate_weight_bytes(source, torch.finfo(placement.dtype).bits // 8)


def family_placement(placement: Placement, setting: PrecisionSetting, family: ModelFamily) -> Placement:
    """The engine's placement, except that FLUX.1 runs in bf16 rather than fp16 on CUDA under `auto`: its
    activations overflow fp16 (black images), and Black Forest Labs ship and run it in bf16."""
    if (
        setting == "auto"
        and family is ModelFamily.FLUX
        and placement.precision == "fp16"
        and placement.device.startswith("cuda")
        and torch.cuda.is_bf16_supported()
    ):
        return Placement(placement.device, "bf16")
    return placement


def free_device_memory(device: str) -> int | None:
    """Free memory of a CUDA device, or MemAvailable of the host for the CPU; None when unknown."""
    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    if device == "cpu":
        return host_available_memory()
    return None


def host_available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _quiet_libraries() -> None:
    """Progress bars from the loaders would flood the worker log; warnings still come through."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
