"""Per-job add-ons on tiny models: LoRA, VAE swap, embeddings, tomesd, the safety screen and PNG parameters; each
changes the output as documented and leaves the shared model clean for the next job."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sdserver.config import Settings
from sdserver.engines.base import EngineOutput, JobFailed
from sdserver.engines.diffusion import addons as addons_module
from sdserver.engines.diffusion.engine import DiffusionEngine
from sdserver.jobs import JobKind
from sdserver.objects.base import make_object_key
from sdserver.objects.local import LocalObjectStore
from tests.support.tiny_addons import make_tiny_embedding, make_tiny_lora, make_tiny_vae
from tests.support.tiny_sd import RecordingContext, make_job, make_tiny_model, pixels, png_bytes

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*"),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

MODEL = "tiny"
PROMPT = "a photo of a cat"


@dataclass
class World:
    data_dir: Path
    objects: LocalObjectStore
    engine: DiffusionEngine
    init_key: str

    def output(self, engine: DiffusionEngine | None = None, **params: Any) -> EngineOutput:
        kind = JobKind.IMG2IMG if "init_image_key" in params else JobKind.TEXT2IMG
        context = RecordingContext()
        [output] = (engine or self.engine).run([make_job(MODEL, kind, **params)], lambda _job: context)
        return output

    def image(self, **params: Any) -> bytes:
        return self.output(**params).images[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    data_dir = tmp_path_factory.mktemp("addons-data")
    models = data_dir / "models"
    make_tiny_model(models, MODEL)
    make_tiny_lora(models, "detail-lora", seed=7)
    make_tiny_lora(models, "style.lora", seed=8)
    make_tiny_vae(models, "vae-folder", seed=5)
    make_tiny_vae(models, "vae-file", seed=5, single_file=True)
    make_tiny_embedding(models, "mystyle")
    make_tiny_embedding(models, "wide", vectors=3)
    objects = LocalObjectStore(data_dir / "objects", "http://test", b"secret", 3600)
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    init_key = objects.put(make_object_key("uploads", "png", temp=False), png_bytes(init), "image/png").key
    return World(data_dir, objects, DiffusionEngine(Settings(data_dir=data_dir), objects), init_key)


def _differs(first: bytes, second: bytes) -> float:
    return float(np.abs(pixels(first) - pixels(second)).mean())


def test_lora_changes_output_by_strength_and_leaves_the_model_clean(world: World) -> None:
    plain = world.image()
    full = world.image(loras=(("detail-lora", 1.0),))
    half = world.image(loras=(("detail-lora", 0.5),))
    assert _differs(plain, full) > 1
    assert _differs(full, half) > 0.5
    assert world.image() == plain, "the adapter is off for the next job"
    assert world.image(loras=(("detail-lora", 1.0),)) == full, "the cached adapter is reused"


def test_two_loras_stack(world: World) -> None:
    one = world.image(loras=(("detail-lora", 1.0),))
    both = world.image(loras=(("detail-lora", 1.0), ("style.lora", 1.0)))
    assert _differs(one, both) > 0.5
    assert world.output(loras=(("style.lora", 1.0),)).meta["tomesd"] == "no"


def test_a_lora_replaced_on_disk_is_read_again(world: World) -> None:
    models = world.data_dir / "models"
    path = make_tiny_lora(models, "swapped-lora", seed=9)
    first = world.image(loras=(("swapped-lora", 1.0),))
    make_tiny_lora(models, "swapped-lora", seed=10)
    later = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(later, later))
    second = world.image(loras=(("swapped-lora", 1.0),))
    assert _differs(first, second) > 0.1, "the stale adapter was dropped and the new weights loaded"
    assert world.image(loras=(("swapped-lora", 1.0),)) == second


@pytest.mark.parametrize("vae", ["vae-folder", "vae-file"])
def test_vae_swap_changes_output_and_restores_the_model_vae(world: World, vae: str) -> None:
    plain = world.image()
    swapped = world.image(vae=vae)
    assert _differs(plain, swapped) > 1
    assert world.image() == plain


def test_single_file_vae_matches_the_same_weights_as_a_folder(world: World) -> None:
    # Both files hold the seed-5 VAE: the original-layout file is converted to exactly the folder's weights.
    assert np.array_equal(pixels(world.image(vae="vae-folder")), pixels(world.image(vae="vae-file")))


@pytest.mark.parametrize("embedding", ["mystyle", "wide"], ids=["one-vector", "three-vectors"])
@pytest.mark.parametrize("clip_skip", [None, 2], ids=["no-skip", "clip-skip-2"])
def test_embedding_token_changes_output_and_is_unloaded(world: World, embedding: str, clip_skip: int | None) -> None:
    prompt = f"a photo of {embedding} cat"
    tokenizer = world.engine._model(MODEL).pipelines[JobKind.TEXT2IMG].tokenizer
    size = len(tokenizer)
    plain = world.image(prompt=prompt, clip_skip=clip_skip)
    styled = world.image(prompt=prompt, clip_skip=clip_skip, embeddings=(embedding,))
    assert _differs(plain, styled) > 0.5
    assert len(tokenizer) == size
    assert world.image(prompt=prompt, clip_skip=clip_skip) == plain


def test_tomesd_merges_tokens_deterministically_and_unpatches(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # The tiny UNet has attention only below full resolution; reach it so the merge has something to do.
    monkeypatch.setattr(addons_module, "TOME_MAX_DOWNSAMPLE", 2)
    plain = world.image()
    merged = world.output(tomesd=True)
    assert merged.meta["tomesd"] == "yes"
    assert _differs(plain, merged.images[0]) > 0
    assert world.image(tomesd=True) == merged.images[0], "same seed, same bytes with token merging"
    unet = world.engine._model(MODEL).pipelines[JobKind.TEXT2IMG].unet
    assert not any(type(module).__name__ == "ToMeBlock" for module in unet.modules())
    assert world.image() == plain


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"loras": (("missing", 1.0),)}, "lora_model"),
        ({"vae": "missing"}, "vae"),
        ({"embeddings": ("missing",)}, "embeddings_model"),
    ],
    ids=["lora", "vae", "embedding"],
)
def test_missing_addon_fails_the_job_naming_the_field(world: World, params: dict[str, Any], field: str) -> None:
    with pytest.raises(JobFailed) as caught:
        world.output(**params)
    assert caught.value.code == "addon_not_found"
    assert field in str(caught.value) and "missing" in str(caught.value)
    assert world.image() == world.image(), "the model still works"


def _parameters(png: bytes) -> str:
    with Image.open(io.BytesIO(png)) as image:
        text = image.text["parameters"]  # type: ignore[attr-defined]
    return str(text)


def test_png_carries_a1111_parameters(world: World) -> None:
    output = world.output(
        negative_prompt="blurry",
        samples=2,
        seed=40,
        clip_skip=2,
        loras=(("detail-lora", 0.5),),
        init_image_key=world.init_key,
        strength=0.8,
    )
    first, second = (_parameters(png) for png in output.images)
    assert first.splitlines() == [
        PROMPT,
        "Negative prompt: blurry",
        "Steps: 2, Sampler: EulerDiscreteScheduler, CFG scale: 7.5, Seed: 40, Size: 64x64, Model: tiny, "
        'Denoising strength: 0.8, Clip skip: 2, Lora: "detail-lora: 0.5"',
    ]
    assert "Seed: 41," in second


def test_safety_screen_replaces_flagged_images(world: World) -> None:
    # A threshold of 0 flags every image: the real checker runs and the replacement is visible.
    strict = DiffusionEngine(Settings(data_dir=world.data_dir, nsfw_threshold=0.0), world.objects)
    output = world.output(strict, safety_checker=True, safety_checker_type="black", samples=2)
    assert output.meta["nsfw_content_detected"] is True
    assert len(output.meta["nsfw_scores"]) == 2
    assert all(not pixels(png).any() for png in output.images)
    assert "Seed: 1234" in _parameters(output.images[0])
    relaxed = world.output(safety_checker=True, safety_checker_type="blur")
    assert relaxed.meta["nsfw_content_detected"] is False
    assert relaxed.images[0] == world.image(), "an image under the threshold is kept as is"


def test_tomesd_that_cannot_patch_is_reported_not_faked(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    import tomesd

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("no transformer blocks")

    monkeypatch.setattr(tomesd, "apply_patch", refuse)
    output = world.output(tomesd=True)
    assert output.meta["tomesd"] == "unavailable: tomesd cannot patch this model (no transformer blocks)"
    assert output.images[0] == world.image()


@pytest.mark.parametrize(
    ("folder", "name", "params", "field"),
    [
        ("lora", "broken.safetensors", {"loras": (("broken", 1.0),)}, "lora_model"),
        ("vae", "broken.safetensors", {"vae": "broken"}, "vae"),
        ("embeddings", "broken.safetensors", {"embeddings": ("broken",)}, "embeddings_model"),
    ],
    ids=["lora", "vae", "embedding"],
)
def test_corrupt_addon_fails_the_job_and_leaves_the_model_clean(
    world: World, folder: str, name: str, params: dict[str, Any], field: str
) -> None:
    plain = world.image()
    path = world.data_dir / "models" / folder / name
    path.write_bytes(b"not a safetensors file")
    try:
        with pytest.raises(JobFailed) as caught:
            world.output(**params)
    finally:
        path.unlink()
    assert caught.value.code == "addon_load_failed"
    assert str(caught.value).startswith(f"{field}: 'broken' could not be loaded")
    assert world.image() == plain
