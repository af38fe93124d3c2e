"""The `models` engine: runs model_load jobs (URL download, hub snapshot or local import, then atomic install, then
publish to the object store when models live there too)."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Final

from sdserver.catalog.downloads import download_to_part
from sdserver.catalog.families import FamilyInfo
from sdserver.catalog.families.loras import detect_lora
from sdserver.catalog.families.staged import detect_staged
from sdserver.catalog.files import (
    SOURCE_HUB,
    SOURCE_LOCAL,
    SOURCE_URL,
    ModelFileError,
    install_file,
    install_folder,
    local_import_path,
    part_path,
    remove_model_files,
    stale_parts,
    tree_size,
)
from sdserver.catalog.layout import CHECKPOINTS_DIR, CONFIG_DIR_SUFFIX, MODEL_INDEX, models_dir_for
from sdserver.catalog.registry import ModelKind, ModelRegistry
from sdserver.config import Settings
from sdserver.engines.base import EngineOutput, JobFailed, StepContext
from sdserver.engines.model_files import ModelFiles
from sdserver.errors import FetchError, JobErrorCode, StorageError, UnsupportedModelError
from sdserver.job_params import ModelLoadParams
from sdserver.jobs import Job, JobKind
from sdserver.netguard import FetchPolicy
from sdserver.objects.base import ObjectStore

log = logging.getLogger(__name__)

# The registry row mirrors job progress at most this often (the job row has its own throttle in the worker).
_MIRROR_INTERVAL_S: Final = 0.5
_COPY_CHUNK: Final = 4 * 1024 * 1024
# Hub files a diffusers folder does not need: other frameworks' weights and duplicate single-file checkpoints.
_HUB_IGNORE: Final = ["*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.ot", "*.pb", "*.tflite"]


class _Reporter:
    """Progress to the registry row in bytes (throttled), and to the job in KiB, which also checks for a cancel:
    the job's step counters are 32-bit integers, too small for the bytes of a multi-GiB file."""

    def __init__(self, registry: ModelRegistry, kind: ModelKind, model_id: str, ctx: StepContext):
        self._registry, self._kind, self._model_id, self._ctx = registry, kind, model_id, ctx
        self._mirrored = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._mirrored >= _MIRROR_INTERVAL_S or (total and done >= total):
            self._mirrored = now
            self._registry.progress(self._kind, self._model_id, done=done, total=total)
        self._ctx.step(kib(done), kib(total))


class ModelLoaderEngine:
    """Torch-free; any worker may run it. Failures mark the registry row failed and fail the job with the reason;
    a stop or crash mid-download leaves the `.part` file, which the next attempt resumes with HTTP Range."""

    name: str = "models"

    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry | None = None,
        *,
        objects: ObjectStore | None = None,
        files: ModelFiles | None = None,
    ):
        self._settings = settings
        self._models_dir = models_dir_for(settings)
        self._registry = registry
        self._files = files or ModelFiles(settings, objects)
        self._policy = FetchPolicy.from_settings(settings, max_bytes=settings.model_download_max_bytes)

    def kinds(self) -> Collection[JobKind]:
        return frozenset({JobKind.MODEL_LOAD})

    def handles(self, job: Job) -> bool:
        return job.kind is JobKind.MODEL_LOAD

    def models(self) -> Collection[str] | None:
        return None

    def held_models(self) -> Collection[str]:
        return ()

    def clear(self) -> None:
        pass

    def run(self, jobs: Sequence[Job], ctx: Callable[[Job], StepContext]) -> list[EngineOutput]:
        return [self._load(job, ctx(job)) for job in jobs]

    def _registry_now(self) -> ModelRegistry:
        if self._registry is None:
            # Built on first use so that a worker without load jobs never opens this connection pool.
            from sdserver.database import create_db_engine

            self._registry = ModelRegistry(create_db_engine(self._settings.sql_url))
        return self._registry

    def _load(self, job: Job, ctx: StepContext) -> EngineOutput:
        registry = self._registry_now()
        params = job.params_as(ModelLoadParams)
        kind, model_id = ModelKind(params.model_kind), job.model_id
        report = _Reporter(registry, kind, model_id, ctx)
        try:
            installed, family = self._fetch_and_install(kind, model_id, params, report)
            # Before the row turns ready: a worker on another box may be asked for the model right after.
            self._files.publish(kind, model_id, installed)
        except (FetchError, ModelFileError, OSError, StorageError) as exc:
            message = f"Model load failed: {_reason(exc)}"
            registry.mark_failed(kind, model_id, message)
            raise JobFailed(JobErrorCode.MODEL_LOAD_FAILED, message) from None
        except UnsupportedModelError as exc:
            message = f"Model load failed: {exc.message}"
            registry.mark_failed(kind, model_id, message)
            raise JobFailed(JobErrorCode.UNSUPPORTED_MODEL, message) from None
        # Recorded before the row turns ready, so a ready row always carries what detection found.
        registry.set_family(kind, model_id, family)
        size = tree_size(installed)
        fmt = "diffusers" if installed.is_dir() else installed.suffix.lstrip(".")
        if not registry.mark_ready(kind, model_id, format=fmt, size=size):
            # delete_model ran while we finished: honour it rather than leave unlisted files behind.
            remove_model_files(self._models_dir, kind, model_id)
            raise JobFailed(JobErrorCode.MODEL_DELETED, "The model was deleted while it was loading")
        log.info("model %s (%s) loaded: %s, %d bytes", model_id, kind.value, installed, size)
        return EngineOutput(images=[], meta={"model_id": model_id, "model_type": kind.value, "format": fmt})

    def _fetch_and_install(
        self, kind: ModelKind, model_id: str, params: ModelLoadParams, report: _Reporter
    ) -> tuple[Path, FamilyInfo | None]:
        source_type, source = params.source_type, params.source
        if source_type == SOURCE_URL:
            part = part_path(self._models_dir, kind, model_id, source)
            download_to_part(source, part, self._policy, report)
            family = self._detect_staged(kind, model_id, part)
            installed = install_file(self._models_dir, kind, model_id, part)
        elif source_type == SOURCE_HUB:
            staged = self._hub_snapshot(kind, model_id, source, params.revision, report)
            family = self._detect_staged(kind, model_id, staged)
            installed = install_folder(self._models_dir, kind, model_id, staged)
        elif source_type == SOURCE_LOCAL:
            installed, family = self._import_local(kind, model_id, source, report)
        else:
            raise ModelFileError(f"unknown source type {source_type!r}")
        for leftover in stale_parts(self._models_dir, kind, model_id):
            _remove(leftover)
        return installed, family

    def _detect_staged(self, kind: ModelKind, model_id: str, staged: Path) -> FamilyInfo | None:
        """The family of staged files, before they replace anything; files of no supported family are removed and
        the load fails with what detection found (a worker would only fail on them later, after evicting a model)."""
        if kind is ModelKind.LORA:
            return detect_lora(staged)
        if kind is not ModelKind.CHECKPOINT:
            return None
        config_dir = self._models_dir / CHECKPOINTS_DIR / f"{model_id}{CONFIG_DIR_SUFFIX}"
        try:
            return detect_staged(
                staged, model_id, config_dir=config_dir if (config_dir / MODEL_INDEX).is_file() else None
            )
        except UnsupportedModelError:
            _remove(staged)
            raise

    def _import_local(
        self, kind: ModelKind, model_id: str, source: str, report: _Reporter
    ) -> tuple[Path, FamilyInfo | None]:
        path = local_import_path(source, self._settings.model_import_dirs)
        size = tree_size(path)
        if size > self._policy.max_bytes:
            raise ModelFileError(f"{source!r} is {size} bytes, over the limit of {self._policy.max_bytes} bytes")
        staged = part_path(self._models_dir, kind, model_id, source)
        _remove(staged)
        staged.parent.mkdir(parents=True, exist_ok=True)
        report(0, size)
        if path.is_dir():
            # The import dir is the operator's: copy, never move.
            shutil.copytree(path, staged, symlinks=False)
            report(size, size)
            family = self._detect_staged(kind, model_id, staged)
            return install_folder(self._models_dir, kind, model_id, staged), family
        _copy_with_progress(path, staged, size, report)
        family = self._detect_staged(kind, model_id, staged)
        return install_file(self._models_dir, kind, model_id, staged), family

    def _hub_snapshot(
        self, kind: ModelKind, model_id: str, repo_id: str, revision: str | None, report: _Reporter
    ) -> Path:
        # huggingface_hub talks only to the configured hub endpoint, never to a client-given host.
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError

        staged = part_path(self._models_dir, kind, model_id, f"hub:{repo_id}@{revision or ''}")
        staged.parent.mkdir(parents=True, exist_ok=True)
        report(0, 0)
        try:
            snapshot_download(
                repo_id=repo_id,
                revision=revision or None,
                local_dir=staged,
                ignore_patterns=_HUB_IGNORE,
            )
        except (HfHubHTTPError, OSError, ValueError) as exc:
            raise ModelFileError(
                f"could not download {repo_id!r} from the Hugging Face Hub (is this server offline?): {_reason(exc)}"
            ) from None
        # local_dir downloads keep their own metadata cache, which is not part of the model.
        _remove(staged / ".cache")
        size = tree_size(staged)
        if size > self._policy.max_bytes:
            _remove(staged)
            raise ModelFileError(f"{repo_id!r} is {size} bytes, over the limit of {self._policy.max_bytes} bytes")
        report(size, size)
        return staged


def kib(size: int) -> int:
    """Bytes as whole KiB, rounded up, so a finished file of any size reports done == total."""
    return -(-size // 1024)


def _copy_with_progress(source: Path, target: Path, size: int, report: Callable[[int, int], None]) -> None:
    done = 0
    with source.open("rb") as reader, target.open("wb") as writer:
        while chunk := reader.read(_COPY_CHUNK):
            writer.write(chunk)
            done += len(chunk)
            report(done, size)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FetchError):
        return exc.reason
    if isinstance(exc, StorageError):
        return f"could not publish the model to the object store: {exc}"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
