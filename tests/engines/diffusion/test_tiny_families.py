"""Tiny models of every family: the real layouts (detected as their family, loaded by the family's diffusers
pipeline offline, single files weight for weight equal to their folders) and an 8x VAE."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# Before diffusers/huggingface_hub read it: a test that tried the hub would fail at once instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from sdserver.catalog.families import FewStep, ModelFamily, PredictionType, detect_source_family
from sdserver.catalog.layout import find_model
from sdserver.engines.diffusion.tiny_families.names import FOLDER_ONLY, TinyFamily
from sdserver.engines.diffusion.tiny_families.original_layout import unet_to_ldm
from sdserver.engines.diffusion.tiny_families.recipes import build_tiny_family_pipeline
from sdserver.engines.diffusion.tiny_families.writer import (
    SINGLE_FILE_LAYOUTS,
    make_tiny_family_model,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

SEED = 7
# What each recipe must be detected as, and the pipeline class its folder names.
EXPECTED: dict[TinyFamily, tuple[ModelFamily, PredictionType, FewStep | None, str]] = {
    TinyFamily.SD15: (ModelFamily.SD15, PredictionType.EPSILON, None, "StableDiffusionPipeline"),
    TinyFamily.SD2V: (ModelFamily.SD2, PredictionType.V_PREDICTION, None, "StableDiffusionPipeline"),
    TinyFamily.SDXL: (ModelFamily.SDXL, PredictionType.EPSILON, None, "StableDiffusionXLPipeline"),
    TinyFamily.SDXL_REFINER: (
        ModelFamily.SDXL_REFINER,
        PredictionType.EPSILON,
        None,
        "StableDiffusionXLImg2ImgPipeline",
    ),
    TinyFamily.SD3: (ModelFamily.SD3, PredictionType.FLOW_MATCH, None, "StableDiffusion3Pipeline"),
    TinyFamily.FLUX: (ModelFamily.FLUX, PredictionType.FLOW_MATCH, None, "FluxPipeline"),
    TinyFamily.LCM: (ModelFamily.SD15, PredictionType.EPSILON, FewStep.LCM, "StableDiffusionPipeline"),
}
SINGLE_FILE_FAMILIES = [family for family in TinyFamily if family not in FOLDER_ONLY]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every recipe as a folder (`<family>`) and, where it has one, as a single file (`<family>-file`)."""
    root = tmp_path_factory.mktemp("tiny-families")
    for family in TinyFamily:
        make_tiny_family_model(root, family.value, family, seed=SEED)
        if family not in FOLDER_ONLY:
            make_tiny_family_model(root, f"{family.value}-file", family, seed=SEED, single_file=True)
    return root


def test_every_recipe_has_an_expectation_and_a_single_file_form_unless_folder_only() -> None:
    assert set(EXPECTED) == set(TinyFamily)
    assert set(SINGLE_FILE_LAYOUTS) == set(SINGLE_FILE_FAMILIES)


# Every family as a folder, and as a single file where it has one (FOLDER_ONLY says why Flux has none).
FORMS = [(family, "folder") for family in TinyFamily] + [
    (family, "file") for family in TinyFamily if family not in FOLDER_ONLY
]


@pytest.mark.parametrize(("family", "form"), FORMS, ids=str)
def test_each_tiny_model_is_detected_as_its_family(models_dir: Path, family: TinyFamily, form: str) -> None:
    source = find_model(models_dir, family.value if form == "folder" else f"{family.value}-file")
    assert source is not None
    info = detect_source_family(source)
    assert info is not None
    expected_family, prediction, few_step, pipeline = EXPECTED[family]
    # A checkpoint's prediction type and LCM scheduler come from its config folder, as they do for loading.
    assert (info.family, info.prediction_type, info.few_step) == (expected_family, prediction, few_step)
    assert info.pipeline_class == (pipeline if form == "folder" else None)
    assert not info.inpainting and info.missing_components == frozenset()


@pytest.mark.parametrize("family", list(TinyFamily), ids=str)
def test_each_folder_loads_with_its_pipeline_and_makes_an_image(models_dir: Path, family: TinyFamily) -> None:
    pipe = DiffusionPipeline.from_pretrained(models_dir / "diffusers" / family.value, local_files_only=True)
    assert type(pipe).__name__ == EXPECTED[family][3]
    pipe.set_progress_bar_config(disable=True)
    image = _generate(pipe, family, size=64)
    assert image.size == (64, 64)


@pytest.mark.parametrize("family", SINGLE_FILE_FAMILIES, ids=str)
def test_single_files_load_offline_weight_for_weight(models_dir: Path, family: TinyFamily) -> None:
    folder = DiffusionPipeline.from_pretrained(models_dir / "diffusers" / family.value, local_files_only=True)
    source = find_model(models_dir, f"{family.value}-file")
    assert source is not None and source.config_dir is not None
    loaded = type(folder).from_single_file(str(source.path), config=str(source.config_dir), local_files_only=True)
    modules = {name: part for name, part in folder.components.items() if isinstance(part, torch.nn.Module)}
    assert modules
    for name, module in modules.items():
        expected, actual = module.state_dict(), loaded.components[name].state_dict()
        assert expected.keys() == actual.keys(), name
        assert all(torch.equal(expected[key], actual[key]) for key in expected), name
    assert loaded.scheduler.config == folder.scheduler.config


@pytest.mark.parametrize("family", list(TinyFamily), ids=str)
def test_every_vae_downsamples_8x(family: TinyFamily) -> None:
    vae = build_tiny_family_pipeline(family, seed=SEED).vae
    assert len(vae.config.block_out_channels) == 4
    with torch.no_grad():
        latent = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mode()
        decoded = vae.decode(latent).sample
    assert latent.shape[-2:] == (8, 8) and decoded.shape == (1, 3, 64, 64)
    assert latent.shape[1] == (16 if family in {TinyFamily.SD3, TinyFamily.FLUX} else 4)


def test_inpainting_variants_have_nine_unet_channels_in_both_forms(tmp_path: Path) -> None:
    make_tiny_family_model(tmp_path, "xl-inpaint", TinyFamily.SDXL, inpainting=True)
    make_tiny_family_model(tmp_path, "sd2-inpaint", TinyFamily.SD2V, inpainting=True, single_file=True)
    for model_id, family in (("xl-inpaint", ModelFamily.SDXL), ("sd2-inpaint", ModelFamily.SD2)):
        source = find_model(tmp_path, model_id)
        assert source is not None
        info = detect_source_family(source)
        assert info is not None and info.inpainting and info.family is family


def test_forms_a_family_lacks_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="single_file: tiny Flux models are folders only"):
        make_tiny_family_model(tmp_path, "flux", TinyFamily.FLUX, single_file=True)
    with pytest.raises(ValueError, match="inpainting: tiny sd3 models have no inpainting variant"):
        make_tiny_family_model(tmp_path, "sd3", TinyFamily.SD3, inpainting=True)
    assert not any(tmp_path.iterdir())


def test_the_seed_decides_the_weights() -> None:
    first, again, other = (build_tiny_family_pipeline(TinyFamily.SD3, seed=seed) for seed in (1, 1, 2))
    weights = [pipe.transformer.state_dict()["pos_embed.proj.weight"] for pipe in (first, again, other)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_an_lcm_guidance_embedding_has_no_original_name() -> None:
    unet = build_tiny_family_pipeline(TinyFamily.SD15, seed=SEED).unet
    unet.register_to_config(time_cond_proj_dim=8)
    with pytest.raises(KeyError, match="LCM guidance embedding"):
        unet_to_ldm(unet)


def _generate(pipe: Any, family: TinyFamily, *, size: int) -> Image.Image:
    arguments: dict[str, Any] = {
        "prompt": "a photo of a cat",
        "num_inference_steps": 2,
        "generator": torch.Generator().manual_seed(0),
    }
    if family is TinyFamily.SDXL_REFINER:
        arguments |= {"image": Image.new("RGB", (size, size), "gray"), "strength": 1.0}
    else:
        arguments |= {"height": size, "width": size}
    if family in {TinyFamily.SD3, TinyFamily.FLUX}:
        arguments["max_sequence_length"] = 32
    with torch.inference_mode():
        image: Image.Image = pipe(**arguments).images[0]
    return image
