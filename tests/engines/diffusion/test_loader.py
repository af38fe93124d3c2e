"""Loading from disk, offline: bundled SD 1.5 configs, both checkpoint formats, and clear failures for bad files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sdserver.config import Settings
from sdserver.engines.base import JobFailed
from sdserver.engines.diffusion.engine import DiffusionEngine
from sdserver.engines.diffusion.loader import SD1_TEXT_KEY, UNET_INPUT_KEY, bundled_config_dir, checkpoint_shapes
from sdserver.jobs import JobKind
from sdserver.objects.base import make_object_key
from sdserver.objects.local import LocalObjectStore
from tests.support.tiny_sd import RecordingContext, make_job, make_tiny_model, pixels, png_bytes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*")


def _engine(data_dir: Path) -> DiffusionEngine:
    return DiffusionEngine(Settings(data_dir=data_dir), objects=None)  # type: ignore[arg-type]


def _image(engine: DiffusionEngine, model_id: str) -> bytes:
    [output] = engine.run([make_job(model_id)], lambda _job: RecordingContext())
    return output.images[0]


def _failure(engine: DiffusionEngine, model_id: str) -> JobFailed:
    with pytest.raises(JobFailed) as failure:
        _image(engine, model_id)
    return failure.value


def test_bundled_configs_describe_stable_diffusion_1_5() -> None:
    folder = bundled_config_dir()
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder", local_files_only=True))
    counts = [sum(p.numel() for p in model.parameters()) for model in (unet, vae, text)]
    assert counts == [859_520_964, 83_653_863, 123_060_480]
    assert json.loads((folder / "model_index.json").read_text())["safety_checker"] == [None, None]


def test_bundled_tokenizer_is_the_clip_vocabulary() -> None:
    tokenizer = CLIPTokenizer.from_pretrained(bundled_config_dir() / "tokenizer", local_files_only=True)
    assert len(tokenizer) == 49408
    assert tokenizer("A photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_ckpt_checkpoint_loads_like_safetensors(tmp_path: Path) -> None:
    models = tmp_path / "models"
    file = make_tiny_model(models, "tiny", single_file=True)
    expected = _image(_engine(tmp_path), "tiny")
    torch.save({"state_dict": load_file(file)}, file.with_suffix(".ckpt"))
    file.unlink()
    assert _image(_engine(tmp_path), "tiny") == expected


def test_checkpoint_that_is_not_sd1_needs_a_config_folder(tmp_path: Path) -> None:
    file = make_tiny_model(tmp_path / "models", "tiny", single_file=True)
    # Without its own config folder the tiny checkpoint meets the SD 1.5 check, which it fails (32-wide text).
    shutil.rmtree(file.with_name("tiny.config"))
    failure = _failure(_engine(tmp_path), "tiny")
    assert failure.code == "unsupported_model"
    assert "tiny.config" in failure.message


def test_corrupt_checkpoint_fails_the_job_not_the_worker(tmp_path: Path) -> None:
    file = make_tiny_model(tmp_path / "models", "tiny", single_file=True)
    file.write_bytes(b"not a safetensors file")
    assert _failure(_engine(tmp_path), "tiny").code == "model_load_failed"


def test_folder_of_another_architecture_is_refused(tmp_path: Path) -> None:
    folder = make_tiny_model(tmp_path / "models", "xl")
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionXLPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    failure = _failure(_engine(tmp_path), "xl")
    assert failure.code == "unsupported_model"
    assert "StableDiffusionXLPipeline" in failure.message


def test_replaced_files_are_reloaded(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    folder = make_tiny_model(tmp_path / "models", "tiny", seed=1)
    first = _image(engine, "tiny")
    shutil.rmtree(folder)
    make_tiny_model(tmp_path / "models", "tiny", seed=2)
    # Same-second rewrites can keep the old mtime on coarse filesystems: move it on explicitly.
    stamp = (folder / "model_index.json").stat().st_mtime_ns + 10**9
    os.utime(folder / "model_index.json", ns=(stamp, stamp))
    assert _image(engine, "tiny") != first


def test_checkpoint_shapes_read_only_the_header(tmp_path: Path) -> None:
    file = tmp_path / "sd1-inpaint.safetensors"
    tensors = {SD1_TEXT_KEY: torch.zeros(77, 768, dtype=torch.float16), UNET_INPUT_KEY: torch.zeros(320, 9, 3, 3)}
    save_file(tensors, file)
    assert checkpoint_shapes(file, (SD1_TEXT_KEY, UNET_INPUT_KEY, "absent")) == {
        SD1_TEXT_KEY: [77, 768],
        UNET_INPUT_KEY: [320, 9, 3, 3],
    }
    ckpt = tmp_path / "sd1.ckpt"
    torch.save({"state_dict": tensors}, ckpt)
    assert checkpoint_shapes(ckpt, (UNET_INPUT_KEY,)) == {UNET_INPUT_KEY: [320, 9, 3, 3]}


@pytest.mark.parametrize("single_file", [False, True], ids=["folder", "single-file"])
def test_inpainting_model_serves_inpaint_only(tmp_path: Path, single_file: bool) -> None:
    make_tiny_model(tmp_path / "models", "tiny-inpaint", single_file=single_file, inpainting=True)
    objects = LocalObjectStore(tmp_path / "objects", "http://test", b"secret", 3600)
    keys = [
        objects.put(make_object_key("uploads", "png", temp=False), png_bytes(image), "image/png").key
        for image in (Image.new("RGB", (64, 64), (200, 40, 40)), Image.new("L", (64, 64), 255))
    ]
    engine = DiffusionEngine(Settings(data_dir=tmp_path), objects)
    job = make_job("tiny-inpaint", JobKind.INPAINT, init_image_key=keys[0], mask_image_key=keys[1], strength=1.0)
    [output] = engine.run([job], lambda _job: RecordingContext())
    assert pixels(output.images[0]).shape == (64, 64, 3)
    failure = _failure(engine, "tiny-inpaint")
    assert failure.code == "unsupported_model"
    assert "inpainting model" in failure.message
