"""Family detection from diffusers folders and safetensors headers, on the real key layouts and configs (written
here without torch: a header is JSON, the tensor bytes a sparse run of zeros)."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sdserver.catalog.families import (
    FamilyInfo,
    FewStep,
    ModelFamily,
    PredictionType,
    UnsupportedModelError,
    detect_family,
    read_safetensors_header,
)

UNET = "model.diffusion_model."
UNET_IN = UNET + "input_blocks.0.0.weight"
VAE_KEY = "first_stage_model.encoder.conv_in.weight"
SD1_TEXT = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"
SD2_TEXT = "cond_stage_model.model.token_embedding.weight"
XL_CLIP_L = "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight"
XL_CLIP_G = "conditioner.embedders.1.model.positional_embedding"
REFINER_CLIP_G = "conditioner.embedders.0.model.text_projection"
SD3_BLOCK = "joint_blocks.0.context_block.adaLN_modulation.1.bias"
FLUX_BLOCK = "double_blocks.0.img_attn.norm.key_norm.scale"


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], metadata: dict[str, str] | None = None) -> Path:
    """A valid safetensors file (F16 zeros) with these tensor shapes."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, shape in shapes.items():
        size = 2
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + offset)
    return path


def sd_keys(text_key: str, text_shape: tuple[int, ...], in_channels: int = 4) -> dict[str, tuple[int, ...]]:
    return {UNET_IN: (320, in_channels, 3, 3), VAE_KEY: (128, 3, 3, 3), text_key: text_shape}


SINGLE_FILES = {
    "sd15": (sd_keys(SD1_TEXT, (77, 768)), ModelFamily.SD15, PredictionType.EPSILON),
    "sd2": (sd_keys(SD2_TEXT, (49408, 1024)), ModelFamily.SD2, None),
    "sdxl": ({**sd_keys(XL_CLIP_L, (77, 768)), XL_CLIP_G: (77, 1280)}, ModelFamily.SDXL, PredictionType.EPSILON),
    "sdxl_refiner": (sd_keys(REFINER_CLIP_G, (1280, 1280)), ModelFamily.SDXL_REFINER, PredictionType.EPSILON),
}


@pytest.mark.parametrize("name", SINGLE_FILES)
def test_ldm_single_files_are_told_apart_by_their_text_encoders(tmp_path: Path, name: str) -> None:
    shapes, family, prediction = SINGLE_FILES[name]
    info = detect_family(write_safetensors(tmp_path / f"{name}.safetensors", shapes))
    assert info is not None
    assert (info.family, info.prediction_type, info.inpainting, info.few_step) == (family, prediction, False, None)
    assert info.missing_components == frozenset()
    assert info.pipeline_class is None and info.evidence


def test_a_nine_channel_unet_is_an_inpainting_model(tmp_path: Path) -> None:
    for name, text in (("sd15", (SD1_TEXT, (77, 768))), ("sd2", (SD2_TEXT, (49408, 1024)))):
        info = detect_family(write_safetensors(tmp_path / f"{name}.safetensors", sd_keys(*text, in_channels=9)))
        assert info is not None and info.inpainting and info.family.value == name


@pytest.mark.parametrize(
    ("in_channels", "named"), [(8, "instruct-pix2pix (8)"), (7, "upscalers (7)")], ids=["pix2pix", "upscaler"]
)
def test_other_unet_inputs_are_refused_by_name(tmp_path: Path, in_channels: int, named: str) -> None:
    file = write_safetensors(tmp_path / "odd.safetensors", sd_keys(SD1_TEXT, (77, 768), in_channels))
    with pytest.raises(UnsupportedModelError, match=rf"takes {in_channels} input channels.*{re.escape(named)}"):
        detect_family(file)


def test_sd2_prediction_type_comes_from_a_marker_metadata_or_the_config_folder(tmp_path: Path) -> None:
    shapes = sd_keys(SD2_TEXT, (49408, 1024))
    marked = write_safetensors(tmp_path / "marked.safetensors", {**shapes, "v_pred": (0,)})
    stated = write_safetensors(tmp_path / "stated.safetensors", shapes, {"modelspec.prediction_type": "v"})
    epsilon = write_safetensors(tmp_path / "eps.safetensors", shapes, {"modelspec.prediction_type": "epsilon"})
    plain = write_safetensors(tmp_path / "plain.safetensors", shapes)
    config = tmp_path / "plain.config"
    write_json(
        config / "scheduler/scheduler_config.json", {"_class_name": "DDIMScheduler", "prediction_type": "v_prediction"}
    )
    assert prediction_of(marked) is PredictionType.V_PREDICTION
    assert prediction_of(stated) is PredictionType.V_PREDICTION
    assert prediction_of(epsilon) is PredictionType.EPSILON
    assert prediction_of(plain) is None
    assert prediction_of(plain, config) is PredictionType.V_PREDICTION


def test_a_config_folder_with_an_lcm_scheduler_makes_a_checkpoint_few_step(tmp_path: Path) -> None:
    file = write_safetensors(tmp_path / "lcm.safetensors", sd_keys(SD1_TEXT, (77, 768)))
    config = tmp_path / "lcm.config"
    write_json(config / "scheduler/scheduler_config.json", {"_class_name": "LCMScheduler"})
    info = detect_family(file, config_dir=config)
    assert info is not None and info.few_step is FewStep.LCM and info.family is ModelFamily.SD15
    assert info.prediction_type is PredictionType.EPSILON


@pytest.mark.parametrize(
    ("width", "family"),
    [(768, ModelFamily.SD15), (1024, ModelFamily.SD2), (2048, ModelFamily.SDXL), (1280, ModelFamily.SDXL_REFINER)],
)
def test_a_unet_only_file_is_told_by_its_cross_attention_width(tmp_path: Path, width: int, family: ModelFamily) -> None:
    attention = UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
    info = detect_family(
        write_safetensors(tmp_path / "unet.safetensors", {UNET_IN: (320, 4, 3, 3), attention: (640, width)})
    )
    assert info is not None and info.family is family
    assert info.components == frozenset({"unet"}) and "vae" in info.missing_components


def test_a_unet_only_file_of_unknown_width_names_the_width(tmp_path: Path) -> None:
    attention = UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
    file = write_safetensors(tmp_path / "unet.safetensors", {UNET_IN: (320, 4, 3, 3), attention: (640, 999)})
    with pytest.raises(UnsupportedModelError, match=r"cross-attention widths \[999\]"):
        detect_family(file)


@pytest.mark.parametrize("prefix", ["", UNET], ids=["bare", "prefixed"])
def test_sd3_files_report_which_text_encoders_they_carry(tmp_path: Path, prefix: str) -> None:
    bare = write_safetensors(tmp_path / "bare.safetensors", {prefix + SD3_BLOCK: (9216,), VAE_KEY: (128, 3, 3, 3)})
    full = write_safetensors(
        tmp_path / "full.safetensors",
        {
            prefix + SD3_BLOCK: (9216,),
            VAE_KEY: (128, 3, 3, 3),
            "text_encoders.clip_l.transformer.text_model.embeddings.position_embedding.weight": (77, 768),
            "text_encoders.clip_g.transformer.text_model.embeddings.position_embedding.weight": (77, 1280),
            "text_encoders.t5xxl.transformer.shared.weight": (32128, 4096),
        },
    )
    bare_info, full_info = detect_family(bare), detect_family(full)
    assert bare_info is not None and full_info is not None
    assert bare_info.family is full_info.family is ModelFamily.SD3
    assert bare_info.prediction_type is PredictionType.FLOW_MATCH
    assert bare_info.missing_components == frozenset({"text_encoder", "text_encoder_2"})
    assert full_info.missing_components == frozenset() and "text_encoder_3" in full_info.components


FLUX_CASES = {
    "dev": ({"guidance_in.in_layer.bias": (3072,)}, 64, False, None),
    "schnell": ({}, 64, False, FewStep.SCHNELL),
    "fill": ({"guidance_in.in_layer.bias": (3072,)}, 384, True, None),
}


@pytest.mark.parametrize("prefix", ["", UNET], ids=["bare", "prefixed"])
@pytest.mark.parametrize("variant", FLUX_CASES)
def test_flux_variants(tmp_path: Path, prefix: str, variant: str) -> None:
    extra, in_channels, inpainting, few_step = FLUX_CASES[variant]
    shapes = {prefix + FLUX_BLOCK: (128,), prefix + "img_in.weight": (3072, in_channels)}
    shapes |= {prefix + key: shape for key, shape in extra.items()}
    info = detect_family(write_safetensors(tmp_path / "flux.safetensors", shapes))
    assert info is not None and info.family is ModelFamily.FLUX
    assert (info.inpainting, info.few_step, info.prediction_type) == (inpainting, few_step, PredictionType.FLOW_MATCH)
    assert info.components == frozenset({"transformer"})


def test_flux_control_models_are_refused_by_input_width(tmp_path: Path) -> None:
    file = write_safetensors(tmp_path / "depth.safetensors", {FLUX_BLOCK: (128,), "img_in.weight": (3072, 128)})
    with pytest.raises(UnsupportedModelError, match=r"takes 128 input channels.*not Canny/Depth"):
        detect_family(file)


@pytest.mark.parametrize(
    ("shapes", "named"),
    [
        ({FLUX_BLOCK: (128,), "single_stream_modulation.lin.weight": (1, 1)}, "FLUX.2"),
        ({FLUX_BLOCK: (128,), "distilled_guidance_layer.in_proj.bias": (1,)}, "Chroma"),
        ({**sd_keys(XL_CLIP_L, (77, 768)), XL_CLIP_G: (77, 1280), "edm_mean": (1, 4, 1, 1)}, "Playground v2.5"),
    ],
    ids=["flux2", "chroma", "playground"],
)
def test_lookalike_architectures_are_refused_by_name(
    tmp_path: Path, shapes: dict[str, tuple[int, ...]], named: str
) -> None:
    with pytest.raises(UnsupportedModelError, match=named):
        detect_family(write_safetensors(tmp_path / "x.safetensors", shapes))


@pytest.mark.parametrize(
    ("shapes", "named"),
    [
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)}, "a LoRA"),
        ({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": (4, 320)}, "a LoRA"),
        ({"control_model.time_embed.0.weight": (1280, 320)}, "a ControlNet"),
        ({"encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3), "decoder.conv_in.weight": (512, 4, 3, 3)}, "a VAE"),
        ({"clip_l": (2, 768), "clip_g": (2, 1280)}, "a textual-inversion embedding"),
    ],
    ids=["lora-kohya", "lora-peft", "controlnet", "vae", "embedding"],
)
def test_parts_of_models_are_named_for_what_they_are(
    tmp_path: Path, shapes: dict[str, tuple[int, ...]], named: str
) -> None:
    with pytest.raises(UnsupportedModelError, match=f"looks like {named}"):
        detect_family(write_safetensors(tmp_path / "part.safetensors", shapes))


def test_an_unrelated_layout_lists_its_top_level_prefixes(tmp_path: Path) -> None:
    shapes = {f"backbone.layer{n}.weight": (2, 2) for n in range(3)} | {"head.fc.weight": (2, 2)}
    with pytest.raises(UnsupportedModelError) as caught:
        detect_family(write_safetensors(tmp_path / "resnet.safetensors", shapes))
    message = caught.value.message
    assert message.startswith("resnet.safetensors: no Stable Diffusion")
    assert "backbone.layer0.* (1)" in message and "head.fc.* (1)" in message
    assert caught.value.code == "unsupported_model"


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x01\x02",
        struct.pack("<Q", 1 << 40) + b"{}",
        struct.pack("<Q", 4) + b"nope",
        struct.pack("<Q", 2) + b"[]",
    ],
    ids=["empty", "short", "huge-length", "not-json", "not-object"],
)
def test_files_that_are_not_safetensors_say_so(tmp_path: Path, content: bytes) -> None:
    file = tmp_path / "broken.safetensors"
    file.write_bytes(content)
    with pytest.raises(UnsupportedModelError, match=r"broken\.safetensors: not a safetensors file"):
        detect_family(file)


def test_a_tensor_without_a_shape_is_refused(tmp_path: Path) -> None:
    raw = json.dumps({"a": {"dtype": "F16"}}).encode()
    file = tmp_path / "odd.safetensors"
    file.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(UnsupportedModelError, match="tensor 'a' has no shape"):
        read_safetensors_header(file)


def test_header_metadata_and_shapes_are_read(tmp_path: Path) -> None:
    file = write_safetensors(tmp_path / "m.safetensors", {"a.b": (2, 3)}, {"modelspec.title": "x"})
    header = read_safetensors_header(file)
    assert header.shapes == {"a.b": (2, 3)} and header.metadata == {"modelspec.title": "x"}


def test_pickled_checkpoints_are_left_to_the_worker(tmp_path: Path) -> None:
    file = tmp_path / "model.ckpt"
    file.write_bytes(b"PK\x03\x04 not opened here")
    assert detect_family(file) is None


def test_other_paths_are_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnsupportedModelError, match=r"notes\.txt: not a diffusers folder"):
        detect_family(tmp_path / "notes.txt")
    with pytest.raises(UnsupportedModelError, match=r"empty: a folder without model_index\.json"):
        detect_family(tmp_path / "empty")


# --- diffusers folders ---------------------------------------------------------------------------------------------


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def write_folder(root: Path, pipeline: str, configs: dict[str, dict[str, Any]], **index: Any) -> Path:
    """A diffusers folder with these component configs (no weights: detection never reads them)."""
    folder = root / "model"
    entries = {name.split("/")[0]: ["diffusers", "X"] for name in configs}
    write_json(folder / "model_index.json", {"_class_name": pipeline, **entries, **index})
    for name, config in configs.items():
        write_json(folder / name, config)
    return folder


def sd_configs(context: int, scheduler: dict[str, Any], **unet: Any) -> dict[str, dict[str, Any]]:
    return {
        "unet/config.json": {"cross_attention_dim": context, "in_channels": 4, **unet},
        "vae/config.json": {},
        "text_encoder/config.json": {"hidden_act": "quick_gelu" if context == 768 else "gelu"},
        "scheduler/scheduler_config.json": scheduler,
    }


FOLDERS = {
    "sd15": (
        "StableDiffusionPipeline",
        sd_configs(768, {"_class_name": "PNDMScheduler"}),
        {},
        (ModelFamily.SD15, PredictionType.EPSILON, None),
    ),
    "sd2-768-v": (
        "StableDiffusionPipeline",
        sd_configs(1024, {"_class_name": "DDIMScheduler", "prediction_type": "v_prediction"}),
        {},
        (ModelFamily.SD2, PredictionType.V_PREDICTION, None),
    ),
    "lcm-dreamshaper": (
        "LatentConsistencyModelPipeline",
        sd_configs(768, {"_class_name": "LCMScheduler"}, time_cond_proj_dim=256),
        {},
        (ModelFamily.SD15, PredictionType.EPSILON, FewStep.LCM),
    ),
    "sdxl": (
        "StableDiffusionXLPipeline",
        {**sd_configs(2048, {"_class_name": "EulerDiscreteScheduler"}), "text_encoder_2/config.json": {}},
        {},
        (ModelFamily.SDXL, PredictionType.EPSILON, None),
    ),
    "sdxl-refiner": (
        "StableDiffusionXLImg2ImgPipeline",
        {
            "unet/config.json": {"cross_attention_dim": 1280},
            "vae/config.json": {},
            "text_encoder_2/config.json": {},
            "scheduler/scheduler_config.json": {"_class_name": "EulerDiscreteScheduler"},
        },
        {"text_encoder": [None, None], "tokenizer": [None, None], "requires_aesthetics_score": True},
        (ModelFamily.SDXL_REFINER, PredictionType.EPSILON, None),
    ),
    "sdxl-lcm": (
        "StableDiffusionXLPipeline",
        {**sd_configs(2048, {"_class_name": "LCMScheduler"}), "text_encoder_2/config.json": {}},
        {},
        (ModelFamily.SDXL, PredictionType.EPSILON, FewStep.LCM),
    ),
    "sd3": (
        "StableDiffusion3Pipeline",
        {"transformer/config.json": {"in_channels": 16}, "vae/config.json": {}},
        {"text_encoder": ["transformers", "CLIPTextModelWithProjection"], "text_encoder_3": [None, None]},
        (ModelFamily.SD3, PredictionType.FLOW_MATCH, None),
    ),
    "flux-schnell": (
        "FluxPipeline",
        {"transformer/config.json": {"in_channels": 64, "guidance_embeds": False}},
        {},
        (ModelFamily.FLUX, PredictionType.FLOW_MATCH, FewStep.SCHNELL),
    ),
}


@pytest.mark.parametrize("name", FOLDERS)
def test_folders_are_told_apart_by_pipeline_class_and_configs(tmp_path: Path, name: str) -> None:
    pipeline, configs, index, expected = FOLDERS[name]
    info = detect_family(write_folder(tmp_path, pipeline, configs, **index))
    assert info is not None
    assert (info.family, info.prediction_type, info.few_step) == expected
    assert info.pipeline_class == pipeline and not info.inpainting


def test_sd3_without_t5_still_has_what_it_needs(tmp_path: Path) -> None:
    pipeline, configs, index, _ = FOLDERS["sd3"]
    info = detect_family(write_folder(tmp_path, pipeline, configs, text_encoder_2=["t", "C"], **index))
    assert info is not None and "text_encoder_3" not in info.components and info.missing_components == frozenset()


def test_narrow_sd_folders_fall_back_to_the_text_encoder_activation(tmp_path: Path) -> None:
    configs = sd_configs(32, {"_class_name": "DDIMScheduler"})
    configs["text_encoder/config.json"] = {"hidden_act": "gelu"}
    info = detect_family(write_folder(tmp_path, "StableDiffusionPipeline", configs))
    assert info is not None and info.family is ModelFamily.SD2


def test_inpainting_folders(tmp_path: Path) -> None:
    sd = detect_family(
        write_folder(tmp_path / "sd", "StableDiffusionInpaintPipeline", sd_configs(768, {}, in_channels=9))
    )
    fill = detect_family(
        write_folder(
            tmp_path / "fill",
            "FluxFillPipeline",
            {"transformer/config.json": {"in_channels": 384, "guidance_embeds": True}},
        )
    )
    assert sd is not None and sd.inpainting and sd.family is ModelFamily.SD15
    assert fill is not None and fill.inpainting and fill.few_step is None


@pytest.mark.parametrize(
    ("pipeline", "configs", "message"),
    [
        ("KandinskyV22Pipeline", {}, "names the pipeline 'KandinskyV22Pipeline'; this server runs"),
        ("StableDiffusionPipeline", {"vae/config.json": {}}, "unet/config.json is missing"),
        ("StableDiffusionPipeline", {"unet/config.json": {"cross_attention_dim": 768, "in_channels": 8}}, "8 input"),
        ("FluxPipeline", {"transformer/config.json": {"in_channels": 128}}, "takes 128 input channels"),
        (
            "StableDiffusionPipeline",
            sd_configs(768, {"prediction_type": "x0"}),
            "prediction_type 'x0'",
        ),
    ],
    ids=["unknown-pipeline", "missing-config", "pix2pix", "flux-control", "odd-prediction"],
)
def test_unsupported_folders_name_what_they_found(
    tmp_path: Path, pipeline: str, configs: dict[str, dict[str, Any]], message: str
) -> None:
    with pytest.raises(UnsupportedModelError, match=message):
        detect_family(write_folder(tmp_path, pipeline, configs))


def test_a_broken_model_index_is_reported(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text("{not json")
    with pytest.raises(UnsupportedModelError, match=r"model_index\.json is not readable JSON"):
        detect_family(folder)
    (folder / "model_index.json").write_text("[1]")
    with pytest.raises(UnsupportedModelError, match="is not a JSON object"):
        detect_family(folder)


def test_detection_is_torch_free() -> None:
    code = "import sys, sdserver.catalog.families; sys.exit('torch' in sys.modules or 'diffusers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0


def prediction_of(file: Path, config_dir: Path | None = None) -> PredictionType | None:
    info = detect_family(file, config_dir=config_dir)
    assert isinstance(info, FamilyInfo)
    return info.prediction_type
