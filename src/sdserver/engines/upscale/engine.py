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

from sdserver.catalog.layout import AddonKind, addon_dir, models_dir_for
from sdserver.catalog.registry import ModelKind
from sdserver.config import Settings
from sdserver.engines.base import DeviceFailure, DeviceOutOfMemory, EngineOutput, JobFailed, StepContext
from sdserver.engines.inputs import read_input_image
from sdserver.engines.lru import FingerprintLRU
from sdserver.engines.model_files import ModelFiles
from sdserver.engines.precision import PrecisionSetting, choose_device
from sdserver.engines.restore.enhance import EnhanceResult, FaceEnhancer
from sdserver.engines.restore.restorer import RestorerWeightsMissingError, restorer_folder
from sdserver.engines.upscale.archs import OFFICIAL_MODELS
from sdserver.engines.upscale.runner import DEFAULT_TILE_PAD, Upscaler, output_size
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

    def run(self, jobs: Sequence[Job], ctx: Callable[[Job], StepContext]) -> list[EngineOutput]:
        return [self._run_one(job, ctx(job)) for job in jobs]

    def _run_one(self, job: Job, step: StepContext) -> EngineOutput:
        params = job.params_as(SuperResolutionParams)
        if params.face_enhance:
            self._face_restorer()  # missing or unusable restorer weights fail the job before any work
        scale = params.scale
        upscaler = self.upscaler(job.model_id)
        # Phone photos store their rotation in EXIF; the reader turns them upright like the preview.
        image = read_input_image(self._objects, params.input_key, "url", max_pixels=self._max_pixels)
        try:
            result = upscaler.upscale_with_info(image, scale, tile=self._tile, on_tile=step.step)
            output, faces = result.image, None
            if params.face_enhance:
                enhanced = self._faces.enhance(image, output)
                output, faces = enhanced.image, enhanced.faces
        except RuntimeError as exc:
            failure = self._device_error(exc)
            if failure is None:
                raise
            raise failure from exc
        buffer = io.BytesIO()
        output.save(buffer, format="PNG")
        meta: dict[str, Any] = {
            "model_id": job.model_id,
            "scale": scale,
            "input_size": list(image.size),
            "output_size": list(output_size(*image.size, scale)),
            "precision": upscaler.precision,
            "tile": result.tile,
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
