"""Model files in the object store: publish an installed model (content-addressed blobs plus a manifest), and pull
one into a box's models folder (staged, every file's sha256 checked, then installed with one rename); torch-free."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from sdserver.catalog.files import (
    ADDON_KINDS,
    ModelFileError,
    install_file,
    install_folder,
    remove_model_files,
    staging_dir,
)
from sdserver.catalog.ids import is_valid_model_id
from sdserver.catalog.layout import find_addon, find_model
from sdserver.catalog.manifests import ManifestError, ManifestFile, ModelManifest, check_manifest_path
from sdserver.catalog.registry import ModelKind
from sdserver.errors import NotFoundError
from sdserver.objects.base import BlobStore, model_blob_key

# Beside the model folders: which manifest (by digest) the files on this disk came from.
STAMPS_DIR: Final = ".published"
_HASH_CHUNK: Final = 4 * 1024 * 1024


class ModelPullError(Exception):
    """The model's files could not be rebuilt from the object store (a blob is missing, a manifest is bad)."""


class ModelHashMismatchError(ModelPullError):
    """A pulled file's size or sha256 differs from the manifest: nothing was installed."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def build_manifest(installed: Path) -> ModelManifest:
    """The manifest of an installed model: one file, or every file of its folder (dot files are not the model's)."""
    if installed.is_file():
        return ModelManifest(False, (ManifestFile("", installed.stat().st_size, file_sha256(installed)),))
    files: list[ManifestFile] = []
    for path in sorted(installed.rglob("*")):
        relative = path.relative_to(installed).as_posix()
        if not path.is_file() or any(part.startswith(".") for part in relative.split("/")):
            continue
        try:
            check_manifest_path(relative)
        except ManifestError as exc:
            raise ModelFileError(f"cannot publish this model to the object store: {exc}") from None
        files.append(ManifestFile(relative, path.stat().st_size, file_sha256(path)))
    return ModelManifest(True, tuple(files))


def publish_model(blobs: BlobStore, installed: Path) -> ModelManifest:
    """Upload every file of an installed model under its content key (files already there are skipped)."""
    manifest = build_manifest(installed)
    for file in manifest.files:
        blobs.put_blob(model_blob_key(file.sha256), installed / file.path if file.path else installed)
    return manifest


def local_path(models_dir: Path, kind: ModelKind, model_id: str) -> Path | None:
    """The installed file or folder of this model on this disk, or None."""
    if kind is ModelKind.CHECKPOINT:
        source = find_model(models_dir, model_id)
        return source.path if source is not None else None
    return find_addon(models_dir, ADDON_KINDS[kind], model_id)


def pull_model(blobs: BlobStore, manifest: ModelManifest, models_dir: Path, kind: ModelKind, model_id: str) -> Path:
    """Rebuild the model from the object store and install it; returns its path. One pull per model at a time on
    a models folder (workers sharing it wait, then find it done); a failure leaves the old files as they were."""
    digest = manifest.digest()
    with _pull_lock(models_dir, kind, model_id):
        current = local_path(models_dir, kind, model_id)
        if current is not None and read_stamp(models_dir, kind, model_id) == digest:
            return current
        staged = staging_dir(models_dir) / f"pull--{kind.value}--{model_id}--{uuid.uuid4().hex[:12]}"
        try:
            if manifest.folder:
                for file in manifest.files:
                    target = staged.joinpath(*check_manifest_path(file.path).split("/"))
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _fetch_verified(blobs, file, target)
                installed = install_folder(models_dir, kind, model_id, staged)
            else:
                _fetch_verified(blobs, manifest.files[0], staged)
                installed = install_file(models_dir, kind, model_id, staged)
        except ManifestError as exc:
            raise ModelPullError(str(exc)) from None
        finally:
            _remove(staged)
        write_stamp(models_dir, kind, model_id, digest)
        return installed


def forget_pulled(models_dir: Path, kind: ModelKind, model_id: str) -> bool:
    """Remove a pulled copy whose model was deleted from the registry; True when one was there."""
    if read_stamp(models_dir, kind, model_id) is None:
        return False
    with _pull_lock(models_dir, kind, model_id):
        remove_model_files(models_dir, kind, model_id)
        _stamp_path(models_dir, kind, model_id).unlink(missing_ok=True)
    return True


def read_stamp(models_dir: Path, kind: ModelKind, model_id: str) -> str | None:
    try:
        return _stamp_path(models_dir, kind, model_id).read_text().strip() or None
    except OSError:
        return None


def write_stamp(models_dir: Path, kind: ModelKind, model_id: str, digest: str) -> None:
    path = _stamp_path(models_dir, kind, model_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    temp.write_text(digest)
    temp.replace(path)


def _fetch_verified(blobs: BlobStore, file: ManifestFile, target: Path) -> None:
    key = model_blob_key(file.sha256)
    try:
        blobs.get_blob(key, target)
    except NotFoundError:
        raise ModelPullError(f"file {file.path or '(model file)'} ({key}) is missing from the object store") from None
    size = target.stat().st_size
    got = file_sha256(target)
    if size != file.size or got != file.sha256:
        raise ModelHashMismatchError(
            f"file {file.path or '(model file)'} from the object store does not match the manifest: "
            f"expected {file.size} bytes with sha256 {file.sha256}, got {size} bytes with sha256 {got}"
        )


def _stamp_path(models_dir: Path, kind: ModelKind, model_id: str) -> Path:
    if not is_valid_model_id(model_id):
        raise ModelFileError(f"{model_id!r} is not a valid model id")
    return models_dir / STAMPS_DIR / f"{kind.value}--{model_id}"


@contextlib.contextmanager
def _pull_lock(models_dir: Path, kind: ModelKind, model_id: str) -> Iterator[None]:
    # flock is per open file: threads and processes on this box (and NFS clients with lockd) serialise here.
    folder = staging_dir(models_dir)
    folder.mkdir(parents=True, exist_ok=True)
    _stamp_path(models_dir, kind, model_id)  # validates the id before it names a file
    with (folder / f"pull--{kind.value}--{model_id}.lock").open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
