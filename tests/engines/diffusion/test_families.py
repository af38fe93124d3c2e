"""DiffusionEngine on a tiny model of every family (folders, and single files where the family has them): each kind
it serves, seeded reproducibility, SD 2.x v-prediction, LCM, the SDXL refiner, SDXL ControlNet, refusals that evict
nothing, and the size estimate the cache evicts by."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import ControlNetModel, FluxFillPipeline, FluxTransformer2DModel, LCMScheduler
from PIL import Image
from safetensors.torch import load_file, save_file

from sdserver.catalog.layout import AddonKind, addon_dir, find_model
from sdserver.config import Settings
from sdserver.engines.base import EngineOutput, JobFailed
from sdserver.engines.diffusion.engine import DiffusionEngine, model_footprint
from sdserver.engines.diffusion.families import detect_model
from sdserver.engines.diffusion.loader import load_model
from sdserver.engines.diffusion.schedulers import build_scheduler
from sdserver.engines.diffusion.tiny_families.names import TinyFamily
from sdserver.engines.diffusion.tiny_families.recipes import build_tiny_family_pipeline
from sdserver.engines.diffusion.tiny_families.writer import make_tiny_family_model
from sdserver.engines.precision import Placement
from sdserver.job_params import ControlNetMode, ControlNetParams, ControlNetUnit, GenerationParams, SchedulerChoice
from sdserver.jobs import Job, JobKind
from sdserver.objects.base import make_object_key
from sdserver.objects.local import LocalObjectStore
from tests.support.tiny_sd import RecordingContext, make_job, pixels, png_bytes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

SIZE = 64
FLOW = SchedulerChoice("FlowMatchEulerDiscreteScheduler", False, None)
EULER = SchedulerChoice("EulerDiscreteScheduler", False, None)
LCM = SchedulerChoice("LCMScheduler", False, None)
SCHEDULERS = {TinyFamily.SD3: FLOW, TinyFamily.FLUX: FLOW, TinyFamily.LCM: LCM}
REFINER_ID = "xl-refiner"
CONTROLNET_ID = "xl-canny"
# (model id, recipe): every recipe as a folder, and as a single file except Flux (names.FOLDER_ONLY says why).
# SD 1.5 in both forms is test_engine.py's subject, and an LCM file is an SD 1.5 file with an LCM scheduler config.
FAMILIES = (TinyFamily.SD2V, TinyFamily.SDXL, TinyFamily.SD3, TinyFamily.FLUX, TinyFamily.LCM)
MODELS = [(family.value, family) for family in FAMILIES] + [
    (f"{family.value}-file", family) for family in (TinyFamily.SD2V, TinyFamily.SDXL, TinyFamily.SD3)
]


@dataclass
class World:
    data_dir: Path
    objects: LocalObjectStore
    engine: DiffusionEngine
    init_key: str
    mask_key: str

    def run(self, job: Job, engine: DiffusionEngine | None = None) -> EngineOutput:
        [output] = (engine or self.engine).run([job], lambda _job: RecordingContext())
        return output

    def job(self, model_id: str, kind: JobKind, family: TinyFamily = TinyFamily.SD15, **fields: Any) -> Job:
        values: dict[str, Any] = {"prompt": "a photo of a cat", "steps": 2, "seed": 1234, "tomesd": False}
        values |= {"safety_checker": False, "scheduler": SCHEDULERS.get(family, EULER)}
        if kind is not JobKind.TEXT2IMG:
            values |= {"init_image_key": self.init_key, "strength": 1.0}
        if kind is JobKind.INPAINT:
            values["mask_image_key"] = self.mask_key
        params = GenerationParams(**(values | fields))
        return make_job(model_id, kind, params, width=SIZE, height=SIZE)

    def failure(self, job: Job, engine: DiffusionEngine | None = None) -> JobFailed:
        with pytest.raises(JobFailed) as failure:
            self.run(job, engine)
        return failure.value


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data_dir = tmp_path_factory.mktemp("families")
    models = data_dir / "models"
    for model_id, family in MODELS:
        make_tiny_family_model(models, model_id, family, single_file=model_id.endswith("-file"), seed=3)
    make_tiny_family_model(models, REFINER_ID, TinyFamily.SDXL_REFINER, seed=5)
    objects = LocalObjectStore(data_dir / "objects", "http://test", b"secret", 3600)
    gradient = Image.linear_gradient("L").resize((SIZE, SIZE)).convert("RGB")
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (SIZE // 2, 0, SIZE, SIZE))
    keys = [
        objects.put(make_object_key("uploads", "png", temp=False), png_bytes(image), "image/png").key
        for image in (gradient, mask)
    ]
    # fp32 whatever the CPU: the byte-equality checks compare runs of one precision anyway, and fp32 is quicker
    # than emulated bf16.
    engine = DiffusionEngine(Settings(data_dir=data_dir), objects, max_loaded=16, precision="fp32")
    yield World(data_dir, objects, engine, keys[0], keys[1])
    engine.clear()


@pytest.mark.parametrize(("model_id", "family"), MODELS, ids=[model_id for model_id, _ in MODELS])
def test_each_family_serves_every_kind_reproducibly(world: World, model_id: str, family: TinyFamily) -> None:
    first = world.run(world.job(model_id, JobKind.TEXT2IMG, family))
    assert world.run(world.job(model_id, JobKind.TEXT2IMG, family)).images == first.images, "same seed, same bytes"
    assert pixels(first.images[0]).shape == (SIZE, SIZE, 3)
    for kind in (JobKind.IMG2IMG, JobKind.INPAINT):
        output = world.run(world.job(model_id, kind, family))
        assert pixels(output.images[0]).shape == (SIZE, SIZE, 3), kind
        assert output.images[0] != first.images[0], kind
    assert first.meta["model_family"] == detect_model(_source(world, model_id)).family.value


def test_the_refiner_serves_images_only(world: World) -> None:
    for kind in (JobKind.IMG2IMG, JobKind.INPAINT):
        assert pixels(world.run(world.job(REFINER_ID, kind)).images[0]).shape == (SIZE, SIZE, 3)
    failure = world.failure(world.job(REFINER_ID, JobKind.TEXT2IMG))
    assert failure.code == "unsupported_model" and "sdxl_refiner" in failure.message


@pytest.mark.parametrize("model_id", ["sd2v", "sd2v-file"])
def test_sd2_v_prediction_reaches_the_scheduler(world: World, model_id: str) -> None:
    source = _source(world, model_id)
    model = load_model(source, Placement("cpu", "fp32"), detect_model(source))
    scheduler = build_scheduler(SchedulerChoice("UniPCMultistepScheduler", True, None), model.scheduler_config, 0)
    assert scheduler.config.prediction_type == "v_prediction"


def test_lcm_runs_with_the_lcm_scheduler(world: World) -> None:
    output = world.run(world.job("lcm", JobKind.TEXT2IMG, TinyFamily.LCM))
    assert output.meta["scheduler"] == "LCMScheduler"
    held = world.engine._loaded.get("lcm", _source(world, "lcm").fingerprint())
    assert held is not None and isinstance(held.pipelines[JobKind.TEXT2IMG].scheduler, LCMScheduler)


def test_flow_models_refuse_noise_prediction_samplers(world: World) -> None:
    failure = world.failure(world.job("flux", JobKind.TEXT2IMG, scheduler=EULER))
    assert failure.code == "unsupported_scheduler"
    assert "FlowMatchEulerDiscreteScheduler" in failure.message


def test_the_sdxl_refiner_pass_changes_the_image(world: World) -> None:
    base_only = world.run(world.job("sdxl", JobKind.TEXT2IMG, steps=5))
    refined = world.run(world.job("sdxl", JobKind.TEXT2IMG, steps=5, refiner=True))
    assert refined.meta["refiner"] == REFINER_ID
    assert pixels(refined.images[0]).shape == (SIZE, SIZE, 3)
    assert refined.images[0] != base_only.images[0]
    assert world.run(world.job("sdxl", JobKind.TEXT2IMG, steps=5, refiner=True)).images == refined.images
    inpainted = world.run(world.job("sdxl", JobKind.INPAINT, steps=5, refiner=True))
    assert inpainted.meta["refiner"] == REFINER_ID


def test_without_a_refiner_sdxl_runs_base_only_and_says_so(world: World) -> None:
    objects = world.objects
    engine = DiffusionEngine(Settings(data_dir=world.data_dir, sdxl_refiner="absent"), objects, precision="fp32")
    try:
        output = world.run(world.job("sdxl", JobKind.TEXT2IMG, steps=5, refiner=True), engine)
    finally:
        engine.clear()
    assert output.meta["refiner"] == "not installed"
    base_only = world.run(world.job("sdxl", JobKind.TEXT2IMG, steps=5))
    assert pixels(output.images[0]).tolist() == pixels(base_only.images[0]).tolist()


def test_sdxl_controlnet_runs_and_flow_models_refuse_controlnet(world: World) -> None:
    _make_sdxl_controlnet(world.data_dir / "models")
    for model_id in ("sdxl", "sd3"):
        generation = world.job(model_id, JobKind.TEXT2IMG).params
        assert isinstance(generation, GenerationParams)
        params = ControlNetParams(
            generation=generation, units=(ControlNetUnit(CONTROLNET_ID),), control_image_key=world.init_key
        )
        job = make_job(model_id, JobKind.CONTROLNET, params, width=SIZE, height=SIZE)
        if model_id == "sd3":
            failure = world.failure(job)
            assert failure.code == "unsupported_model" and "sd3" in failure.message
            continue
        output = world.run(job)
        assert pixels(output.images[0]).shape == (SIZE, SIZE, 3)
        assert output.meta["controlnet_mode"] == ControlNetMode.TEXT2IMG.value


def test_addons_a_family_cannot_take_fail_or_are_reported(world: World) -> None:
    failure = world.failure(world.job("sdxl", JobKind.TEXT2IMG, embeddings=("some-embedding",)))
    assert failure.code == "invalid_params" and "embeddings_model" in failure.message and "sdxl" in failure.message
    flux = world.run(world.job("flux", JobKind.TEXT2IMG, TinyFamily.FLUX, tomesd=True, negative_prompt="ugly"))
    assert flux.meta["tomesd"].startswith("unavailable")


def test_an_unsupported_model_fails_before_anything_is_evicted(world: World, tmp_path: Path) -> None:
    data_dir = tmp_path
    models = data_dir / "models"
    make_tiny_family_model(models, "sd15", TinyFamily.SD15)
    make_tiny_family_model(models, "refiner", TinyFamily.SDXL_REFINER)
    (models / "checkpoints").mkdir(exist_ok=True)
    save_file(
        {"encoder.down.0.block.0.conv1.weight": torch.zeros(4, 4)}, models / "checkpoints" / "vae-only.safetensors"
    )
    engine = DiffusionEngine(Settings(data_dir=data_dir), world.objects, max_loaded=1, precision="fp32")
    try:
        world.run(world.job("sd15", JobKind.TEXT2IMG), engine)
        failure = world.failure(world.job("vae-only", JobKind.TEXT2IMG), engine)
        assert failure.code == "unsupported_model" and "VAE" in failure.message
        assert engine.held_models() == {"sd15"}
        # A model that cannot serve the job's kind is refused before loading too.
        assert world.failure(world.job("refiner", JobKind.TEXT2IMG), engine).code == "unsupported_model"
        assert engine.held_models() == {"sd15"}
    finally:
        engine.clear()


@pytest.mark.parametrize("model_id", ["sdxl", "sd3", "flux"])
def test_the_size_estimate_counts_every_component_at_the_engine_precision(world: World, model_id: str) -> None:
    source = _source(world, model_id)
    loaded = load_model(source, Placement("cpu", "fp32"), detect_model(source))
    estimate = model_footprint(source, Placement("cpu", "fp32"))
    # Loaded modules also hold a few unsaved buffers (position ids): close, not equal.
    assert abs(estimate - loaded.weight_bytes) < 0.05 * loaded.weight_bytes
    assert model_footprint(source, Placement("cpu", "bf16")) == estimate // 2


def test_bf16_reaches_every_component(world: World) -> None:
    source = _source(world, "flux")
    loaded = load_model(source, Placement("cpu", "bf16"), detect_model(source))
    pipeline = loaded.pipelines[JobKind.TEXT2IMG]
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        dtypes = [parameter.dtype for parameter in getattr(pipeline, name).parameters()]
        assert dtypes.count(torch.bfloat16) > len(dtypes) // 2, name


def _source(world: World, model_id: str) -> Any:
    source = find_model(world.data_dir / "models", model_id)
    assert source is not None
    return source


def _make_sdxl_controlnet(models_dir: Path) -> None:
    unet = build_tiny_family_pipeline(TinyFamily.SDXL, seed=3).unet
    torch.manual_seed(11)
    # Four hint stages: the hint must come down 8x like the VAE's latents.
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    with torch.no_grad():
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.weight.normal_(0.0, 0.2)
    controlnet.save_pretrained(addon_dir(models_dir, AddonKind.CONTROLNET) / CONTROLNET_ID, safe_serialization=True)


@pytest.mark.parametrize("model_id", ["sdxl", "sd3", "flux"])
def test_a_lora_for_the_family_changes_its_images(world: World, model_id: str) -> None:
    family = TinyFamily(model_id)
    lora_id = f"{model_id}-lora"
    _make_family_lora(world.data_dir / "models", lora_id, family)
    plain = world.run(world.job(model_id, JobKind.TEXT2IMG, family))
    with_lora = world.run(world.job(model_id, JobKind.TEXT2IMG, family, loras=((lora_id, 1.0),)))
    assert with_lora.images[0] != plain.images[0]
    # Taken off after the job: the model makes its plain images again.
    assert world.run(world.job(model_id, JobKind.TEXT2IMG, family)).images == plain.images


def _make_family_lora(models_dir: Path, lora_id: str, family: TinyFamily) -> None:
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = build_tiny_family_pipeline(family, seed=3)
    denoiser = pipe.unet if family is TinyFamily.SDXL else pipe.transformer
    torch.manual_seed(9)
    denoiser.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False)
    )
    layers = get_peft_model_state_dict(denoiser)
    folder = addon_dir(models_dir, AddonKind.LORA)
    if family is TinyFamily.SDXL:
        type(pipe).save_lora_weights(folder, unet_lora_layers=layers, weight_name=f"{lora_id}.safetensors")
    else:
        type(pipe).save_lora_weights(folder, transformer_lora_layers=layers, weight_name=f"{lora_id}.safetensors")


def test_a_flux_fill_model_inpaints_only(world: World) -> None:
    _make_flux_fill(world.data_dir / "models", "flux-fill")
    output = world.run(world.job("flux-fill", JobKind.INPAINT, TinyFamily.FLUX))
    assert pixels(output.images[0]).shape == (SIZE, SIZE, 3)
    assert output.meta["model_family"] == "flux"
    failure = world.failure(world.job("flux-fill", JobKind.TEXT2IMG, TinyFamily.FLUX))
    assert failure.code == "unsupported_model" and "inpainting model" in failure.message


def _make_flux_fill(models_dir: Path, model_id: str) -> None:
    """FLUX.1 Fill's layout: the Flux transformer also reads the masked image's latents and the 8x8-packed mask."""
    pipe = build_tiny_family_pipeline(TinyFamily.FLUX, seed=3)
    torch.manual_seed(4)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=384,
        out_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=pipe.transformer.config.joint_attention_dim,
        pooled_projection_dim=pipe.transformer.config.pooled_projection_dim,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    parts = {name: part for name, part in pipe.components.items() if name not in {"image_encoder", "feature_extractor"}}
    fill = FluxFillPipeline(**(parts | {"transformer": transformer.eval()}))
    fill.save_pretrained(models_dir / "diffusers" / model_id, safe_serialization=True)


def test_an_sd3_file_without_t5_runs_without_it(world: World, tmp_path: Path) -> None:
    file = make_tiny_family_model(tmp_path / "models", "sd3-no-t5", TinyFamily.SD3, single_file=True, seed=3)
    save_file(
        {key: value for key, value in load_file(file).items() if not key.startswith("text_encoders.t5xxl.")}, file
    )
    engine = DiffusionEngine(Settings(data_dir=tmp_path), world.objects, precision="fp32")
    try:
        output = world.run(world.job("sd3-no-t5", JobKind.TEXT2IMG, TinyFamily.SD3), engine)
    finally:
        engine.clear()
    assert pixels(output.images[0]).shape == (SIZE, SIZE, 3)


def test_half_precision_keeps_t5s_float32_layers_in_every_pipeline(world: World) -> None:
    source = _source(world, "flux")
    loaded = load_model(source, Placement("cpu", "fp16"), detect_model(source))
    for kind, pipeline in loaded.pipelines.items():
        dtypes = {parameter.dtype for parameter in pipeline.text_encoder_2.parameters()}
        assert dtypes == {torch.float16, torch.float32}, kind


def test_only_flux_on_cuda_under_auto_leaves_fp16() -> None:
    from sdserver.catalog.families import ModelFamily
    from sdserver.engines.diffusion.engine import family_placement

    cpu = Placement("cpu", "bf16")
    assert family_placement(cpu, "auto", ModelFamily.FLUX) == cpu
    forced = Placement("cuda", "fp16")
    assert family_placement(forced, "fp16", ModelFamily.FLUX) == forced
    assert family_placement(forced, "auto", ModelFamily.SDXL) == forced
