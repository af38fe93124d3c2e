"""Model manifests: the files of a model published to the object store (relative path, size, sha256 each), kept
in their own table beside the model registry; torch-free."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sdserver.catalog.registry import ModelKind, ModelState, models
from sdserver.database import metadata, utcnow
from sdserver.jobstore.tables import to_db_time

MANIFEST_VERSION: Final = 1
# One path component of a file inside a model folder: no leading dot (so never `.` or `..`), no separators.
_COMPONENT = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,199}")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_DEPTH: Final = 8

model_manifests = sa.Table(
    "model_manifests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("model_id", sa.String(128), nullable=False),
    # sha256 of the manifest JSON: a worker compares it with the copy it pulled to tell a reloaded model.
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("manifest", sa.Text, nullable=False),
    sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("kind", "model_id", name="uq_model_manifests_kind_model_id"),
)


class ManifestError(ValueError):
    """A stored manifest that breaks the rules (a path that could leave the model's folder, a bad digest)."""


@dataclass(frozen=True)
class ManifestFile:
    """One file of a model: its path inside the model's folder (`""` for a single-file model), size and sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelManifest:
    """Everything a worker needs to rebuild a model's files from the object store and check every byte."""

    folder: bool
    files: tuple[ManifestFile, ...]

    def __post_init__(self) -> None:
        if not self.files:
            raise ManifestError("a manifest lists at least one file")
        if not self.folder and (len(self.files) != 1 or self.files[0].path != ""):
            raise ManifestError("a single-file manifest lists exactly one file, with an empty path")
        for file in self.files:
            if self.folder:
                check_manifest_path(file.path)
            if not _HEX_SHA256.fullmatch(file.sha256) or file.size < 0:
                raise ManifestError(f"bad size or sha256 for {file.path!r}")

    @property
    def size(self) -> int:
        return sum(file.size for file in self.files)

    def to_json(self) -> str:
        files = [{"path": file.path, "size": file.size, "sha256": file.sha256} for file in self.files]
        return json.dumps({"version": MANIFEST_VERSION, "folder": self.folder, "files": files}, sort_keys=True)

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_json(cls, text: str) -> ModelManifest:
        try:
            data = json.loads(text)
            files = tuple(ManifestFile(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in data["files"])
            return cls(folder=bool(data["folder"]), files=files)
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"unreadable model manifest: {exc}") from None


def check_manifest_path(path: str) -> str:
    """A relative POSIX path made of safe components only, so joining it to a folder stays inside that folder."""
    parts = path.split("/")
    if not path or len(parts) > _MAX_DEPTH or not all(_COMPONENT.fullmatch(part) for part in parts):
        raise ManifestError(f"file path {path!r} is not allowed in a model manifest")
    return path


@dataclass(frozen=True)
class PublishedModel:
    """What the registry says about a model's published files: its row state, and the manifest when ready."""

    state: ModelState
    manifest: ModelManifest | None


class ManifestStore:
    """Manifests by (kind, model id). A manifest counts only while its registry row is ready: a model that is
    reloading, failed or deleted has no files to pull."""

    def __init__(self, engine: Engine):
        self._engine = engine

    def save(self, kind: ModelKind, model_id: str, manifest: ModelManifest) -> None:
        values: dict[str, Any] = {
            "digest": manifest.digest(),
            "manifest": manifest.to_json(),
            "published_at": to_db_time(utcnow()),
        }
        with self._engine.begin() as conn:
            conn.execute(sa.delete(model_manifests).where(*_key(kind, model_id)))
            conn.execute(sa.insert(model_manifests).values(kind=kind.value, model_id=model_id, **values))

    def delete(self, kind: ModelKind, model_id: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(sa.delete(model_manifests).where(*_key(kind, model_id)))

    def lookup(self, kind: ModelKind, model_id: str) -> PublishedModel | None:
        """None when the registry has no row for the model (never loaded, or deleted)."""
        query = (
            sa.select(models.c.state, model_manifests.c.manifest)
            .select_from(models.outerjoin(model_manifests, sa.and_(*_key(kind, model_id))))
            .where(models.c.kind == kind.value, models.c.model_id == model_id)
        )
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        state = ModelState(row.state)
        ready = state is ModelState.READY and row.manifest is not None
        return PublishedModel(state, ModelManifest.from_json(row.manifest) if ready else None)

    def ready_ids(self, kind: ModelKind) -> frozenset[str]:
        """Ids of this kind whose files are in the object store and whose registry row is ready."""
        query = (
            sa.select(model_manifests.c.model_id)
            .join(
                models,
                sa.and_(models.c.kind == model_manifests.c.kind, models.c.model_id == model_manifests.c.model_id),
            )
            .where(model_manifests.c.kind == kind.value, models.c.state == ModelState.READY.value)
        )
        with self._engine.connect() as conn:
            return frozenset(str(model_id) for model_id in conn.execute(query).scalars())


def _key(kind: ModelKind, model_id: str) -> tuple[sa.ColumnElement[bool], sa.ColumnElement[bool]]:
    return model_manifests.c.kind == kind.value, model_manifests.c.model_id == model_id
