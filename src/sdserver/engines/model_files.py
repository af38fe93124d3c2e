"""The engines' one hook to models in the object store: publish a freshly loaded model, list published ids for the
claim, and make a job's model and add-on files present on this box (pulled and verified) before it runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sdserver.catalog.bucket import (
    ModelHashMismatchError,
    ModelPullError,
    forget_pulled,
    local_path,
    publish_model,
    pull_model,
    read_stamp,
    write_stamp,
)
from sdserver.catalog.files import ModelFileError
from sdserver.catalog.layout import models_dir_for
from sdserver.catalog.manifests import ManifestError, ManifestStore
from sdserver.catalog.registry import ModelKind
from sdserver.engines.base import JobFailed
from sdserver.errors import JobErrorCode, StorageError
from sdserver.job_params import ControlNetParams, GenerationParams
from sdserver.jobs import Job, JobKind
from sdserver.objects.base import BlobStore, ObjectStore
from sdserver.objects.local import LocalObjectStore
from sdserver.objects.switching import SwitchingObjectStore

if TYPE_CHECKING:
    from sdserver.config import Settings

log = logging.getLogger(__name__)

_GENERATION_KINDS = frozenset({JobKind.TEXT2IMG, JobKind.IMG2IMG, JobKind.INPAINT})


class ModelFiles:
    """Bucket-backed models for one worker. Off (every method a no-op) when `models_in_object_store` is `no`, or
    `auto` while the object store is the local folder, which other boxes cannot read."""

    def __init__(self, settings: Settings, objects: ObjectStore | None, manifests: ManifestStore | None = None):
        self._settings = settings
        self._objects = objects
        self._models_dir = models_dir_for(settings)
        self._manifests = manifests

    def blobs(self) -> BlobStore | None:
        """The store model files go to now (decided per call: `update_s3` may switch the store at run time)."""
        mode, objects = self._settings.models_in_object_store, self._objects
        blobs: object = objects
        if mode == "no" or not isinstance(blobs, BlobStore):
            return None
        if mode == "yes":
            return blobs
        active = objects.active if isinstance(objects, SwitchingObjectStore) else objects
        return None if isinstance(active, LocalObjectStore) else blobs

    def publish(self, kind: ModelKind, model_id: str, installed: Path) -> None:
        """Upload a freshly installed model and record its manifest (or drop an older one when publishing is off,
        so no worker pulls the files this load replaced). Raises StorageError when the store fails."""
        blobs = self.blobs()
        if blobs is None:
            self._manifests_now().delete(kind, model_id)
            return
        manifest = publish_model(blobs, installed)
        self._manifests_now().save(kind, model_id, manifest)
        write_stamp(self._models_dir, kind, model_id, manifest.digest())
        log.info("model %s (%s) published to the object store: %d files", model_id, kind.value, len(manifest.files))

    def published(self, kind: ModelKind) -> frozenset[str]:
        """Ids of this kind a worker can pull: the claim must not skip jobs for models not on this disk yet."""
        if self.blobs() is None:
            return frozenset()
        return self._manifests_now().ready_ids(kind)

    def ensure_job(self, job: Job) -> None:
        """Pull what the job needs and this disk lacks (or holds in an older version); raises JobFailed."""
        for kind, model_id in job_files(job):
            self.ensure(kind, model_id)

    def ensure(self, kind: ModelKind, model_id: str) -> None:
        blobs = self.blobs()
        if blobs is None:
            return
        published = self._manifests_now().lookup(kind, model_id)
        if published is None:
            # Deleted through some API: a copy this box pulled must not keep serving it.
            if forget_pulled(self._models_dir, kind, model_id):
                log.info("model %s (%s) was deleted; removed its pulled files", model_id, kind.value)
            return
        manifest = published.manifest
        if manifest is None:
            return
        present = local_path(self._models_dir, kind, model_id) is not None
        if present and read_stamp(self._models_dir, kind, model_id) == manifest.digest():
            return
        log.info("pulling model %s (%s) from the object store: %d bytes", model_id, kind.value, manifest.size)
        try:
            pull_model(blobs, manifest, self._models_dir, kind, model_id)
        except ModelHashMismatchError as exc:
            raise JobFailed(JobErrorCode.MODEL_HASH_MISMATCH, f"Model {model_id!r}: {exc}") from None
        except (ModelPullError, ModelFileError, ManifestError) as exc:
            raise JobFailed(JobErrorCode.MODEL_PULL_FAILED, f"Model {model_id!r} could not be pulled: {exc}") from None
        except StorageError as exc:
            message = f"Model {model_id!r} could not be read from the object store: {exc.message}"
            raise JobFailed(JobErrorCode.STORAGE_UNAVAILABLE, message) from None

    def _manifests_now(self) -> ManifestStore:
        if self._manifests is None:
            # Built on first use, so a worker that never meets a bucket-backed model opens no pool for it.
            from sdserver.database import create_db_engine

            self._manifests = ManifestStore(create_db_engine(self._settings.sql_url))
        return self._manifests


def job_files(job: Job) -> list[tuple[ModelKind, str]]:
    """Every model and add-on a job reads, by registry kind; ids were validated by the API."""
    if job.kind is JobKind.SUPER_RESOLUTION:
        return [(ModelKind.UPSCALER, job.model_id)]
    wanted = [(ModelKind.CHECKPOINT, job.model_id)]
    if job.kind is JobKind.CONTROLNET:
        control = job.params_as(ControlNetParams)
        generation = control.generation
        wanted += [(ModelKind.CONTROLNET, unit.model) for unit in control.units]
    elif job.kind in _GENERATION_KINDS:
        generation = job.params_as(GenerationParams)
    else:
        return []
    wanted += [(ModelKind.LORA, lora_id) for lora_id, _ in generation.loras]
    wanted += [(ModelKind.VAE, generation.vae)] if generation.vae else []
    wanted += [(ModelKind.EMBEDDINGS, embedding_id) for embedding_id in generation.embeddings]
    return wanted
