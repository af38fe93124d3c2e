"""Family detection in the `models` engine: a load records what it found; files of no supported family fail the
load before they replace anything, and leave nothing staged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdserver.catalog.families import FewStep, ModelFamily
from sdserver.catalog.files import SOURCE_LOCAL, SOURCE_URL
from sdserver.catalog.registry import ModelKind, ModelState
from sdserver.engines.base import JobFailed
from sdserver.errors import JobErrorCode
from tests.engines.test_model_loader import Loader, load_job, make_loader
from tests.support.family_layouts import checkpoint_bytes, lora_bytes, write_folder_model
from tests.support.http_host import HttpHost, Reply

ALIEN = checkpoint_bytes("sd15").replace(b"model.diffusion_model.input_blocks", b"model.diffusion_model.output_block")


@pytest.fixture
def host() -> Iterator[HttpHost]:
    routes = {
        "/xl.safetensors": Reply(checkpoint_bytes("sdxl")),
        "/alien.safetensors": Reply(ALIEN),
        "/xl-lora.safetensors": Reply(lora_bytes(2048)),
    }
    with HttpHost(routes) as running:
        yield running


@pytest.fixture
def loader(tmp_path: Path) -> Loader:
    return make_loader(tmp_path, model_import_dirs=[tmp_path / "imports"])


def test_a_checkpoint_load_records_its_family(loader: Loader, host: HttpHost) -> None:
    loader.run(load_job("xl", ModelKind.CHECKPOINT, SOURCE_URL, host.url("/xl.safetensors")))
    record = loader.registry.get(ModelKind.CHECKPOINT, "xl")
    assert record is not None and (record.state, record.family) == (ModelState.READY, ModelFamily.SDXL)


def test_a_lora_load_records_the_family_its_keys_name(loader: Loader, host: HttpHost) -> None:
    loader.run(load_job("style", ModelKind.LORA, SOURCE_URL, host.url("/xl-lora.safetensors")))
    record = loader.registry.get(ModelKind.LORA, "style")
    assert record is not None and record.family is ModelFamily.SDXL


def test_an_unsupported_file_fails_without_replacing_the_model_it_would_have_replaced(
    loader: Loader, host: HttpHost
) -> None:
    loader.run(load_job("base", ModelKind.CHECKPOINT, SOURCE_URL, host.url("/xl.safetensors")))
    with pytest.raises(JobFailed) as failed:
        loader.run(load_job("base", ModelKind.CHECKPOINT, SOURCE_URL, host.url("/alien.safetensors")))
    assert failed.value.code is JobErrorCode.UNSUPPORTED_MODEL
    assert failed.value.message.startswith("Model load failed: base: no Stable Diffusion 1.x/2.x/XL")
    assert loader.state(ModelKind.CHECKPOINT, "base") == (ModelState.FAILED, failed.value.message)
    assert (loader.models_dir / "checkpoints" / "base.safetensors").read_bytes() == checkpoint_bytes("sdxl")
    assert not any((loader.models_dir / ".staging").iterdir())


def test_a_local_folder_of_an_unsupported_pipeline_is_refused_and_not_copied_in(loader: Loader, tmp_path: Path) -> None:
    folder = write_folder_model(tmp_path / "imports", "upscaler", "sd15")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionUpscalePipeline"}))
    with pytest.raises(JobFailed) as failed:
        loader.run(load_job("upscaler", ModelKind.CHECKPOINT, SOURCE_LOCAL, str(folder)))
    assert "upscaler: model_index.json names the pipeline 'StableDiffusionUpscalePipeline'" in failed.value.message
    assert not (loader.models_dir / "diffusers" / "upscaler").exists()
    assert not any((loader.models_dir / ".staging").iterdir())


def test_a_local_lcm_folder_records_its_few_step_hint(loader: Loader, tmp_path: Path) -> None:
    folder = write_folder_model(tmp_path / "imports", "fast", "lcm")
    loader.run(load_job("fast", ModelKind.CHECKPOINT, SOURCE_LOCAL, str(folder)))
    record = loader.registry.get(ModelKind.CHECKPOINT, "fast")
    assert record is not None and (record.family, record.few_step) == (ModelFamily.SD15, FewStep.LCM)
