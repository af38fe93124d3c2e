"""The `upscale` engine: runs SUPER_RESOLUTION jobs with Real-ESRGAN weights from `<models dir>/upscalers/`."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, Final

import torch
from PIL import Image

from sdserver.batch_keys import batch_key, is_solo
from sdserver.catalog.layout import AddonKind, addon_dir, models_dir_for
from sdserver.catalog.registry import ModelKind
from sdserver.config import Settings
from sdserver.engines.base import DeviceFailure, DeviceOutOfMemory, EngineOutput, JobFailed, StepContext
from sdserver.engines.inputs import read_input_image
from sdserver.engines.lru import FingerprintLRU
from sdserver.engines.model_files import ModelFiles
from sdserver.engines.precision import Placement, PrecisionSetting, choose_device, choose_placement
from sdserver.engines.restore.enhance import EnhanceResult, FaceEnhancer
from sdserver.engines.restore.restorer import RestorerWeightsMissingError, restorer_folder
from sdserver.engines.upscale.archs import OFFICIAL_MODELS
from sdserver.engines.upscale.batched import Request, upscale_together
from sdserver.engines.upscale.runner import DEFAULT_TILE_PAD, Upscaler, UpscaleResult, output_size
from sdserver.engines.upscale.tiling import is_out_of_memory
from sdserver.engines.upscale.weights import UnsupportedWeightsError, find_weights, list_weight_ids, load_network
from sdserver.errors import JobErrorCode
from sdserver.job_params import SuperResolutionParams
from sdserver.jobs import Job, JobKind
from sdserver.objects.base import ObjectStore

log = logging.getLogger(__name__)

# models() is called on every claim; a directory listing that often is cheap, but not free on network disks.
SCAN_INTERVAL_S: Final = 2.0


def weights_folder(settings: Settings) -> Path:
    return addon_dir(models_dir_for(settings), AddonKind.UPSCALER)


class UpscaleEngine:
    """Serves the five published Real-ESRGAN ids plus any `<id>.pth|.safetensors` dropped in the weights folder.
    Keeps the last `max_loaded` networks loaded (they are small: 4–67 MB)."""

    name: str = "upscale"

    def __init__(
        self,
        settings: Settings,
        objects: ObjectStore,
        *,
        device: torch.device | str | None = None,
        precision: PrecisionSetting = "auto",
        tile: int | None = None,
        tile_pad: int = DEFAULT_TILE_PAD,
        tile_batch: int = 1,
        max_loaded: int = 2,
        max_input_pixels: int | None = None,
        files: ModelFiles | None = None,
    ) -> None:
        self._objects = objects
        self._folder = weights_folder(settings)
        self._device = torch.device(choose_device(device))
        self._precision: PrecisionSetting = precision
        # Where the networks run (the worker sizes its batches from it).
        self.placement: Placement = choose_placement(precision, self._device)
        self._tile, self._tile_pad, self._tile_batch = tile, tile_pad, tile_batch
        self._max_pixels = max_input_pixels or settings.max_upscale_input_pixels
        self._lock = threading.Lock()
        # Fingerprinted by the weight file's path, mtime and size: a replaced file is reloaded.
        self._loaded: FingerprintLRU[str, Upscaler] = FingerprintLRU(max(1, max_loaded))
        self._scanned_at = -float("inf")
        self._scanned: frozenset[str] = frozenset()
        self._files = files or ModelFiles(settings, objects)
        self._faces = FaceEnhancer(
            restorer_folder(models_dir_for(settings)), settings.face_restorer, device=self._device,
            precision=precision, fidelity=settings.codeformer_fidelity,
        )  # fmt: skip

    def kinds(self) -> Collection[JobKind]:
        return frozenset({JobKind.SUPER_RESOLUTION})

    def handles(self, job: Job) -> bool:
        return job.kind is JobKind.SUPER_RESOLUTION and job.model_id in self.models()

    def models(self) -> Collection[str]:
        now = time.monotonic()
        with self._lock:
            if now - self._scanned_at >= SCAN_INTERVAL_S:
                on_disk = frozenset(OFFICIAL_MODELS) | frozenset(list_weight_ids(self._folder))
                self._scanned = on_disk | self._files.published(ModelKind.UPSCALER)
                self._scanned_at = now
            return self._scanned

    def held_models(self) -> Collection[str]:
        return self._loaded.keys()

    def clear(self) -> None:
        self._loaded.clear()
        self._faces.clear()
        if self._device.type == "cuda":
            torch.cuda.empty_cache()

    def batchable(self, job: Job) -> bool:
        """May this job share forward passes with others (a real upscale whose batch key is not a solo one)? The
        worker claims batches, and waits for batch-mates, only for these."""
        return (
            job.kind is JobKind.SUPER_RESOLUTION
            and isinstance(job.params, SuperResolutionParams)
            and not is_solo(batch_key(job.kind.value, job.params, unique=f"job:{job.id}"))
        )

    def device_free_bytes(self) -> int | None:
        """Free memory on a CUDA device now (None elsewhere: the worker's CPU batch size needs none)."""
        if self._device.type != "cuda":
            return None
        free, _total = torch.cuda.mem_get_info(self._device)
        return int(free)

    def run(self, jobs: Sequence[Job], ctx: Callable[[Job], StepContext]) -> list[EngineOutput]:
        """Jobs of one model run as one batch (tiles of all of them in shared forward passes, batched.py), the
        rest alone; `meta.batch_size` says how many jobs shared the network's forward passes."""
        groups: dict[str, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(job.model_id, []).append(index)
        outputs: dict[int, EngineOutput] = {}
        for indexes in groups.values():
            group = [jobs[index] for index in indexes]
            done = self._run_batch(group, ctx) if len(group) > 1 else [self._run_one(group[0], ctx(group[0]))]
            outputs.update(zip(indexes, done, strict=True))
        return [outputs[index] for index in range(len(jobs))]

    def _run_one(self, job: Job, step: StepContext) -> EngineOutput:
        params = self._params(job)
        upscaler = self.upscaler(job.model_id)
        image = self._input(params)
        try:
            result = upscaler.upscale_with_info(image, params.scale, tile=self._tile, on_tile=step.step)
            output, faces = self._enhance(params, image, result.image)
        except RuntimeError as exc:
            failure = self._device_error(exc)
            if failure is None:
                raise
            raise failure from exc
        return self._output(job, params, image, output, faces, upscaler, tile=result.tile, batch_size=1)

    def _run_batch(self, jobs: Sequence[Job], ctx: Callable[[Job], StepContext]) -> list[EngineOutput]:
        """Jobs of one model upscaled together; an unusable input or restorer fails the batch before any work (the
        worker then runs each job alone), and out of memory hands the jobs back to be run one by one."""
        params = [self._params(job) for job in jobs]
        upscaler = self.upscaler(jobs[0].model_id)
        images = [self._input(job_params) for job_params in params]
        steps = [ctx(job) for job in jobs]
        requests = [
            Request(image, job_params.scale, on_tile=step.step, stopped=_stopped(step))
            for image, job_params, step in zip(images, params, steps, strict=True)
        ]
        failure: Exception | None = None
        finished: list[tuple[UpscaleResult, Image.Image, int | None] | None] = []
        try:
            results = upscale_together(upscaler, requests, tile=self._tile, forward_batch=self._tile_batch * len(jobs))
            for result, job_params, image in zip(results, params, images, strict=True):
                finished.append(None if result is None else (result, *self._enhance(job_params, image, result.image)))
        except RuntimeError as exc:
            if is_out_of_memory(exc):
                failure = DeviceOutOfMemory(f"a batch of {len(jobs)} upscales: {str(exc).splitlines()[0]}")
            else:
                failure = self._device_error(exc)
                if failure is None:
                    raise
        if failure is not None:
            # Raised out of the except block: no traceback pins the batch's tensors while the jobs rerun alone.
            upscaler.free_memory()
            raise failure
        outputs = []
        for job, job_params, image, done in zip(jobs, params, images, finished, strict=True):
            if done is None:  # it left the batch (cancelled or lost): the worker drops its output
                outputs.append(EngineOutput(images=[], meta={}))
                continue
            result, output, faces = done
            outputs.append(
                self._output(job, job_params, image, output, faces, upscaler, tile=result.tile, batch_size=len(jobs))
            )
        return outputs

    def _params(self, job: Job) -> SuperResolutionParams:
        params = job.params_as(SuperResolutionParams)
        if params.face_enhance:
            self._face_restorer()  # missing or unusable restorer weights fail the job before any work
        return params

    def _input(self, params: SuperResolutionParams) -> Image.Image:
        # Phone photos store their rotation in EXIF; the reader turns them upright like the preview.
        return read_input_image(self._objects, params.input_key, "url", max_pixels=self._max_pixels)

    def _enhance(
        self, params: SuperResolutionParams, image: Image.Image, output: Image.Image
    ) -> tuple[Image.Image, int | None]:
        if not params.face_enhance:
            return output, None
        enhanced = self._faces.enhance(image, output)
        return enhanced.image, enhanced.faces

    def _output(
        self,
        job: Job,
        params: SuperResolutionParams,
        image: Image.Image,
        output: Image.Image,
        faces: int | None,
        upscaler: Upscaler,
        *,
        tile: int,
        batch_size: int,
    ) -> EngineOutput:
        buffer = io.BytesIO()
        output.save(buffer, format="PNG")
        meta: dict[str, Any] = {
            "model_id": job.model_id,
            "scale": params.scale,
            "input_size": list(image.size),
            "output_size": list(output_size(*image.size, params.scale)),
            "precision": upscaler.precision,
            "tile": tile,
            "batch_size": batch_size,
        }
        if faces is not None:
            meta.update(face_restorer=self._faces.name, faces_restored=faces)
        return EngineOutput(images=[buffer.getvalue()], meta=meta)

    def upscaler(self, model_id: str) -> Upscaler:
        """The loaded network for `model_id`, loading it (and evicting the oldest) if needed."""
        self._files.ensure(ModelKind.UPSCALER, model_id)
        path = find_weights(self._folder, model_id)
        if path is None:
            raise JobFailed(
                JobErrorCode.MODEL_WEIGHTS_MISSING,
                f"No weights for {model_id}: put {model_id}.pth (or .safetensors) in {self._folder.resolve()}/",
            )
        stat = path.stat()
        identity = (path, stat.st_mtime_ns, stat.st_size)
        cached = self._loaded.get(model_id, identity)
        if cached is not None:
            return cached
        try:
            network, spec = load_network(path)
        except UnsupportedWeightsError as exc:
            raise JobFailed(JobErrorCode.UNSUPPORTED_WEIGHTS, f"Cannot use {path.resolve()}: {exc}") from None
        expected = OFFICIAL_MODELS.get(model_id)
        if expected is not None and expected != spec:
            log.warning(
                "%s holds %s, not the published %s; running it as found", path, spec.describe(), expected.describe()
            )
        upscaler = Upscaler(
            network, spec, device=self._device, precision=self._precision,
            tile_pad=self._tile_pad, tile_batch=self._tile_batch,
        )  # fmt: skip
        self._loaded.put(model_id, identity, upscaler)
        return upscaler

    def restore_faces(self, image: Image.Image) -> EnhanceResult:
        """`image` with every face found restored in place (same size): generation's face_enhance pass."""
        self._face_restorer()
        return self._faces.enhance(image, image)

    @property
    def face_restorer_name(self) -> str:
        return self._faces.name

    def _face_restorer(self) -> None:
        try:
            self._faces.restorer()
        except RestorerWeightsMissingError as exc:
            raise JobFailed(JobErrorCode.FACE_ENHANCE_UNAVAILABLE, str(exc)) from None
        except UnsupportedWeightsError as exc:
            raise JobFailed(JobErrorCode.UNSUPPORTED_WEIGHTS, f"Cannot use the face restorer: {exc}") from None

    def _device_error(self, exc: RuntimeError) -> Exception | None:
        """Out of memory outside the tile loop (which retries its own) fails the job after freeing the loaded
        networks; any other CUDA error means the device is broken and the worker must restart."""
        if is_out_of_memory(exc):
            self.clear()
            return DeviceOutOfMemory(str(exc).splitlines()[0])
        if self._device.type == "cuda" and "CUDA" in str(exc):
            return DeviceFailure(str(exc).splitlines()[0])
        return None


def _stopped(step: StepContext) -> Callable[[], bool]:
    """Whether the worker says this job left its batch (cancelled or lost); contexts that cannot say never do."""
    return lambda: bool(getattr(step, "stopped", False))
