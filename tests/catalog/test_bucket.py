"""Publishing models to the object store and pulling them into another models folder, over the local folder store
and a real S3 server (SeaweedFS): bytes round-trip, every file is verified, a bad file installs nothing."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest

from sdserver.catalog.bucket import (
    ModelHashMismatchError,
    ModelPullError,
    build_manifest,
    forget_pulled,
    local_path,
    publish_model,
    pull_model,
    read_stamp,
)
from sdserver.catalog.files import install_file, install_folder
from sdserver.catalog.layout import MODEL_INDEX, find_model
from sdserver.catalog.manifests import ManifestError, ManifestFile, ModelManifest
from sdserver.catalog.registry import ModelKind
from sdserver.config import Settings
from sdserver.objects.base import BlobStore, check_model_blob_key, is_server_key, model_blob_key
from sdserver.objects.local import LocalObjectStore
from sdserver.objects.s3 import S3ObjectStore
from tests.support.s3_server import S3Server

SAFETENSORS = (8).to_bytes(8, "little") + b'{"a":1} ' + bytes(range(256)) * 40


@pytest.fixture(params=["local", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects", "http://sd.test", b"secret", 3600)
    server: S3Server = request.getfixturevalue("s3_server")
    settings = Settings(
        storage="s3",
        s3_endpoint_url=server.endpoint_url,
        s3_bucket=server.bucket,
        s3_region=server.region,
        s3_access_key_id=server.access_key,  # type: ignore[arg-type]
        s3_secret_access_key=server.secret_key,  # type: ignore[arg-type]
        s3_prefix=f"t-{uuid.uuid4().hex[:12]}",
    )
    return S3ObjectStore.from_settings(settings)


def make_folder_model(models_dir: Path, model_id: str) -> Path:
    """A diffusers-shaped folder (index, nested configs and weights, and a dot file that is not the model's)."""
    staged = models_dir / ".staging" / f"make-{model_id}"
    (staged / "unet").mkdir(parents=True)
    (staged / MODEL_INDEX).write_text('{"_class_name": "StableDiffusionPipeline"}')
    (staged / "unet" / "config.json").write_text('{"sample_size": 8}')
    (staged / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(SAFETENSORS)
    (staged / ".gitattributes").write_text("*.safetensors filter=lfs")
    return install_folder(models_dir, ModelKind.CHECKPOINT, model_id, staged)


def make_file_model(models_dir: Path, kind: ModelKind, model_id: str, data: bytes = SAFETENSORS) -> Path:
    staged = models_dir / ".staging" / f"make-{model_id}"
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(data)
    return install_file(models_dir, kind, model_id, staged)


def test_model_blob_keys_are_content_addressed_and_never_served_as_files() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    key = model_blob_key(digest)
    assert key == f"models/sha256/{digest}"
    assert not is_server_key(key), "model files must not be reachable through /files links"
    for bad in ["models/sha256/../../etc/passwd", f"models/sha256/{digest.upper()}", f"models/{digest}", "x"]:
        with pytest.raises(ValueError):
            check_model_blob_key(bad)


def test_folder_model_published_then_pulled_into_another_box(blobs: BlobStore, tmp_path: Path) -> None:
    box_a, box_b = tmp_path / "a" / "models", tmp_path / "b" / "models"
    installed = make_folder_model(box_a, "tiny")
    manifest = publish_model(blobs, installed)
    assert [file.path for file in manifest.files] == [
        MODEL_INDEX,
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]
    assert all(blobs.has_blob(model_blob_key(file.sha256)) for file in manifest.files)

    pulled = pull_model(blobs, manifest, box_b, ModelKind.CHECKPOINT, "tiny")

    source = find_model(box_b, "tiny")
    assert source is not None and source.path == pulled
    for file in manifest.files:
        assert (pulled / file.path).read_bytes() == (installed / file.path).read_bytes()
    assert not (pulled / ".gitattributes").exists()
    assert read_stamp(box_b, ModelKind.CHECKPOINT, "tiny") == manifest.digest()
    assert not [p for p in (box_b / ".staging").iterdir() if not p.name.endswith(".lock")], "staging left behind"


def test_single_file_addon_round_trip(blobs: BlobStore, tmp_path: Path) -> None:
    box_a, box_b = tmp_path / "a", tmp_path / "b"
    installed = make_file_model(box_a, ModelKind.LORA, "ink")
    manifest = publish_model(blobs, installed)
    assert not manifest.folder and manifest.size == len(SAFETENSORS)

    pulled = pull_model(blobs, manifest, box_b, ModelKind.LORA, "ink")

    assert pulled == box_b / "lora" / "ink.safetensors"
    assert pulled.read_bytes() == SAFETENSORS
    assert local_path(box_b, ModelKind.LORA, "ink") == pulled


def test_a_blob_whose_bytes_changed_fails_the_pull_and_installs_nothing(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects", "http://sd.test", b"secret", 3600)
    installed = make_folder_model(tmp_path / "a", "tiny")
    manifest = publish_model(store, installed)
    weights = next(file for file in manifest.files if file.path.endswith(".safetensors"))
    blob = tmp_path / "objects" / "models" / "sha256" / weights.sha256
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")

    with pytest.raises(ModelHashMismatchError, match="does not match the manifest"):
        pull_model(store, manifest, tmp_path / "b", ModelKind.CHECKPOINT, "tiny")

    assert find_model(tmp_path / "b", "tiny") is None
    assert read_stamp(tmp_path / "b", ModelKind.CHECKPOINT, "tiny") is None


def test_a_missing_blob_fails_the_pull_and_keeps_the_old_copy(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects", "http://sd.test", b"secret", 3600)
    old = make_file_model(tmp_path / "b", ModelKind.CHECKPOINT, "m")
    missing = ModelManifest(False, (ManifestFile("", 10, "0" * 64),))

    with pytest.raises(ModelPullError, match="missing from the object store"):
        pull_model(store, missing, tmp_path / "b", ModelKind.CHECKPOINT, "m")

    assert old.read_bytes() == SAFETENSORS


@pytest.mark.parametrize(
    "path", ["../escape", "/abs", "a/../../b", ".hidden", "a//b", "a\\b", "", "x/" * 9 + "y"], ids=repr
)
def test_manifest_paths_that_could_leave_the_model_folder_are_refused(path: str) -> None:
    with pytest.raises(ManifestError):
        ModelManifest(True, (ManifestFile(path, 1, "a" * 64),))
    text = ModelManifest(True, (ManifestFile("ok", 1, "a" * 64),)).to_json().replace('"ok"', f'"{path}"')
    with pytest.raises(ManifestError):
        ModelManifest.from_json(text.replace("\\", "\\\\"))


def test_manifest_survives_json_and_its_digest_tracks_content(tmp_path: Path) -> None:
    first = build_manifest(make_folder_model(tmp_path / "a", "m"))
    assert ModelManifest.from_json(first.to_json()) == first
    second = build_manifest(make_file_model(tmp_path / "b", ModelKind.CHECKPOINT, "m", SAFETENSORS + b" "))
    assert first.digest() != second.digest()


def test_forgetting_a_pulled_model_removes_its_files_and_stamp(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects", "http://sd.test", b"secret", 3600)
    manifest = publish_model(store, make_file_model(tmp_path / "a", ModelKind.VAE, "v"))
    pull_model(store, manifest, tmp_path / "b", ModelKind.VAE, "v")

    assert forget_pulled(tmp_path / "b", ModelKind.VAE, "v")

    assert local_path(tmp_path / "b", ModelKind.VAE, "v") is None
    assert not forget_pulled(tmp_path / "b", ModelKind.VAE, "v")


def test_a_manifest_that_disagrees_with_the_blob_fails_on_either_store(blobs: BlobStore, tmp_path: Path) -> None:
    manifest = publish_model(blobs, make_file_model(tmp_path / "a", ModelKind.CHECKPOINT, "m"))
    [file] = manifest.files
    lying = ModelManifest(False, (ManifestFile("", file.size + 1, file.sha256),))

    with pytest.raises(ModelHashMismatchError, match=f"expected {file.size + 1} bytes"):
        pull_model(blobs, lying, tmp_path / "b", ModelKind.CHECKPOINT, "m")

    assert find_model(tmp_path / "b", "m") is None
