"""Bucket-backed models through the engines' hook: a load on box A publishes, a job on box B (own models folder,
same database and object store) pulls and verifies; deleted models and a corrupted blob fail clearly."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sdserver.catalog.bucket import read_stamp
from sdserver.catalog.files import SOURCE_LOCAL
from sdserver.catalog.layout import AddonKind, find_addon, find_model, models_dir_for
from sdserver.catalog.manifests import ManifestStore
from sdserver.catalog.registry import ModelKind, ModelRegistry
from sdserver.config import Settings
from sdserver.database import create_db_engine
from sdserver.engines.base import JobFailed
from sdserver.engines.model_files import ModelFiles, job_files
from sdserver.engines.model_loader import ModelLoaderEngine
from sdserver.errors import JobErrorCode
from sdserver.job_params import ControlNetParams, ControlNetUnit, GenerationParams, JobParams, ModelLoadParams
from sdserver.jobs import Job, JobKind, JobStatus
from sdserver.objects.local import LocalObjectStore
from sdserver.objects.switching import SwitchingObjectStore
from tests.support.family_layouts import checkpoint_bytes

# A real SD 1.x key layout: the load job detects the family before it installs anything.
WEIGHTS = checkpoint_bytes("sd15", extra_floats=4000)


def make_job(kind: JobKind, model_id: str, params: JobParams) -> Job:
    return Job(
        id=1, owner_key_id=1, kind=kind, model_id=model_id, params=params, output_keys=(), future_links=(),
        width=64, height=64, steps=2, scheduler="", status=JobStatus.RUNNING, attempts=1, max_attempts=3,
        created_at=datetime.now(UTC),
    )  # fmt: skip


@dataclass
class Boxes:
    """Box A loads (its `models` engine), box B runs jobs; one SQLite database and one object store folder."""

    a: Settings
    b: Settings
    objects: LocalObjectStore
    registry: ModelRegistry
    imports: Path

    def load(self, kind: ModelKind, model_id: str, source: Path) -> None:
        loader = ModelLoaderEngine(self.a, self.registry, objects=self.objects)
        self.registry.begin_load(kind, model_id, source=str(source))
        job = make_job(JobKind.MODEL_LOAD, model_id, ModelLoadParams(kind.value, SOURCE_LOCAL, str(source)))
        loader.run([job], lambda _job: _NoSteps())

    def files_b(self, **overrides: Any) -> ModelFiles:
        return ModelFiles(self.b.model_copy(update=overrides), self.objects)


class _NoSteps:
    def step(self, done: int, total: int) -> None:
        pass


@pytest.fixture
def boxes(tmp_path: Path) -> Boxes:
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    imports = tmp_path / "imports"
    imports.mkdir()
    common: dict[str, Any] = {"database_url": database, "models_in_object_store": "yes", "model_import_dirs": [imports]}
    a = Settings.model_validate({"data_dir": tmp_path / "a", **common})
    b = Settings.model_validate({"data_dir": tmp_path / "b", **common})
    objects = LocalObjectStore(tmp_path / "bucket", "http://sd.test", b"secret", 3600)
    return Boxes(a, b, objects, ModelRegistry(create_db_engine(database)), imports)


def write_folder_model(root: Path) -> Path:
    """An SD 1.x diffusers folder as far as family detection reads it (configs), with one weight file."""
    (root / "unet").mkdir(parents=True)
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}
    index["text_encoder"] = ["transformers", "CLIPTextModel"]
    (root / "model_index.json").write_text(json.dumps(index))
    (root / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": 768, "in_channels": 4}))
    (root / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(WEIGHTS)
    return root


def text2img(model_id: str, **params: Any) -> Job:
    return make_job(JobKind.TEXT2IMG, model_id, GenerationParams(prompt="p", **params))


def test_a_load_on_box_a_is_pulled_by_a_job_on_box_b(boxes: Boxes) -> None:
    boxes.load(ModelKind.CHECKPOINT, "tiny", write_folder_model(boxes.imports / "tiny"))
    boxes.load(ModelKind.LORA, "ink", _file(boxes.imports / "ink.safetensors"))
    files = boxes.files_b()
    assert "tiny" in files.published(ModelKind.CHECKPOINT), "box B's claim must see the model before it has files"
    assert find_model(models_dir_for(boxes.b), "tiny") is None

    files.ensure_job(text2img("tiny", loras=(("ink", 0.5),)))

    source = find_model(models_dir_for(boxes.b), "tiny")
    assert source is not None
    assert (source.path / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == WEIGHTS
    lora = find_addon(models_dir_for(boxes.b), AddonKind.LORA, "ink")
    assert lora is not None and lora.read_bytes() == WEIGHTS


def test_a_reloaded_model_replaces_the_pulled_copy(boxes: Boxes) -> None:
    boxes.load(ModelKind.CHECKPOINT, "m", _file(boxes.imports / "m.safetensors"))
    files = boxes.files_b()
    files.ensure(ModelKind.CHECKPOINT, "m")
    changed = checkpoint_bytes("sd15", extra_floats=10)
    (boxes.imports / "m.safetensors").write_bytes(changed)
    boxes.load(ModelKind.CHECKPOINT, "m", boxes.imports / "m.safetensors")

    files.ensure(ModelKind.CHECKPOINT, "m")

    source = find_model(models_dir_for(boxes.b), "m")
    assert source is not None and source.path.read_bytes() == changed


def test_a_corrupted_blob_fails_the_job_with_model_hash_mismatch(boxes: Boxes) -> None:
    boxes.load(ModelKind.CHECKPOINT, "m", _file(boxes.imports / "m.safetensors"))
    for blob in (boxes.objects.root / "models" / "sha256").iterdir():
        blob.write_bytes(blob.read_bytes()[:-4] + b"evil")

    with pytest.raises(JobFailed) as failed:
        boxes.files_b().ensure_job(text2img("m"))

    assert failed.value.code is JobErrorCode.MODEL_HASH_MISMATCH
    assert "sha256" in failed.value.message
    assert find_model(models_dir_for(boxes.b), "m") is None


def test_a_deleted_model_loses_its_pulled_copy(boxes: Boxes) -> None:
    boxes.load(ModelKind.CHECKPOINT, "m", _file(boxes.imports / "m.safetensors"))
    files = boxes.files_b()
    files.ensure(ModelKind.CHECKPOINT, "m")
    boxes.registry.delete(ModelKind.CHECKPOINT, "m")

    files.ensure(ModelKind.CHECKPOINT, "m")

    assert find_model(models_dir_for(boxes.b), "m") is None
    assert "m" not in files.published(ModelKind.CHECKPOINT)


def test_publishing_off_drops_an_older_manifest(boxes: Boxes) -> None:
    boxes.load(ModelKind.CHECKPOINT, "m", _file(boxes.imports / "m.safetensors"))
    boxes.a = boxes.a.model_copy(update={"models_in_object_store": "no"})
    boxes.load(ModelKind.CHECKPOINT, "m", boxes.imports / "m.safetensors")

    published = ManifestStore(create_db_engine(boxes.a.sql_url)).lookup(ModelKind.CHECKPOINT, "m")
    assert published is not None and published.manifest is None
    assert boxes.files_b().published(ModelKind.CHECKPOINT) == frozenset()


def test_auto_publishes_only_when_the_store_is_a_bucket(boxes: Boxes, tmp_path: Path) -> None:
    local = LocalObjectStore(tmp_path / "objects", "http://sd.test", b"secret", 3600)
    auto = boxes.b.model_copy(update={"models_in_object_store": "auto"})
    assert ModelFiles(auto, SwitchingObjectStore(local, local)).blobs() is None
    assert ModelFiles(auto.model_copy(update={"models_in_object_store": "yes"}), local).blobs() is local
    assert ModelFiles(auto.model_copy(update={"models_in_object_store": "no"}), local).blobs() is None


def test_the_loader_stamps_its_own_copy_so_box_a_never_pulls_it_again(boxes: Boxes) -> None:
    boxes.load(ModelKind.CHECKPOINT, "m", _file(boxes.imports / "m.safetensors"))
    models_a = models_dir_for(boxes.a)
    manifest = ManifestStore(create_db_engine(boxes.a.sql_url)).lookup(ModelKind.CHECKPOINT, "m")
    assert manifest is not None and manifest.manifest is not None
    assert read_stamp(models_a, ModelKind.CHECKPOINT, "m") == manifest.manifest.digest()


def test_job_files_name_every_model_and_addon_a_job_reads() -> None:
    generation = GenerationParams(prompt="p", loras=(("a", 1.0),), vae="v", embeddings=("e",))
    control = ControlNetParams(generation=generation, units=(ControlNetUnit("cn"),), control_image_key="k")
    assert job_files(make_job(JobKind.CONTROLNET, "base", control)) == [
        (ModelKind.CHECKPOINT, "base"),
        (ModelKind.CONTROLNET, "cn"),
        (ModelKind.LORA, "a"),
        (ModelKind.VAE, "v"),
        (ModelKind.EMBEDDINGS, "e"),
    ]


def test_two_data_dirs_sharing_one_models_dir_see_the_same_models(tmp_path: Path) -> None:
    """SDSERVER_MODELS_DIR: a load through box A's loader is found by box B's catalog and engines, no bucket."""
    from sdserver.api.models import ModelCatalog

    shared, imports = tmp_path / "nfs-models", tmp_path / "imports"
    write_folder_model(imports / "tiny")
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    a, b = (
        Settings.model_validate(
            {
                "data_dir": tmp_path / name,
                "models_dir": shared,
                "database_url": database,
                "model_import_dirs": [imports],
            }
        )
        for name in ("a", "b")
    )
    registry = ModelRegistry(create_db_engine(database))
    registry.begin_load(ModelKind.CHECKPOINT, "tiny", source=str(imports / "tiny"))
    job = make_job(JobKind.MODEL_LOAD, "tiny", ModelLoadParams("checkpoint", SOURCE_LOCAL, str(imports / "tiny")))
    ModelLoaderEngine(a, registry).run([job], lambda _job: _NoSteps())

    assert models_dir_for(b) == shared
    assert (shared / "diffusers" / "tiny" / "model_index.json").is_file()
    assert not (tmp_path / "a" / "models").exists() and not (tmp_path / "b" / "models").exists()
    catalog = ModelCatalog(b)
    assert catalog.exists("tiny") and catalog.models_dir == shared
    assert find_model(models_dir_for(b), "tiny") is not None


def _file(path: Path) -> Path:
    path.write_bytes(WEIGHTS)
    return path


def test_an_unreachable_bucket_fails_the_job_as_storage_unavailable(boxes: Boxes) -> None:
    import socket

    from sdserver.objects.s3 import S3ObjectStore

    boxes.load(ModelKind.CHECKPOINT, "m", _file(boxes.imports / "m.safetensors"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    bucket_settings = boxes.b.model_copy(
        update={"storage": "s3", "s3_bucket": "gone", "s3_endpoint_url": f"http://127.0.0.1:{closed}"}
    )
    dead = S3ObjectStore.from_settings(bucket_settings, connect_timeout_s=0.2, read_timeout_s=0.2, max_attempts=1)

    with pytest.raises(JobFailed) as failed:
        ModelFiles(boxes.b, dead).ensure(ModelKind.CHECKPOINT, "m")

    assert failed.value.code is JobErrorCode.STORAGE_UNAVAILABLE
    assert find_model(models_dir_for(boxes.b), "m") is None
