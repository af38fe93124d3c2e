"""ControlNet jobs on the diffusers engine with a tiny seeded model and tiny seeded ControlNets loaded from disk."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sdserver.config import Settings
from sdserver.engines.base import EngineOutput, JobCancelled, JobFailed
from sdserver.engines.diffusion import addons as addons_module
from sdserver.engines.diffusion.engine import DiffusionEngine
from sdserver.engines.diffusion.hints import canny_hint
from sdserver.job_params import ControlNetMode, ControlNetParams, ControlNetUnit
from sdserver.jobs import Job, JobKind
from sdserver.objects.base import make_object_key
from sdserver.objects.local import LocalObjectStore
from tests.support.tiny_addons import make_tiny_embedding, make_tiny_lora
from tests.support.tiny_controlnet import make_tiny_controlnet
from tests.support.tiny_sd import RecordingContext, generation_params, make_job, make_tiny_model, pixels, png_bytes

# diffusers hands torch tensors to numpy 2 APIs in ways numpy deprecates; not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*"),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]

MODEL = "tiny-sd"
CN_A = "tiny-cn-a"
CN_B = "tiny-cn-b"
LORA = "tiny-lora"
EMBEDDING = "cn-style"


@dataclass
class World:
    models: Path
    engine: DiffusionEngine
    objects: LocalObjectStore
    picture_key: str
    other_key: str
    mask_key: str
    picture: Image.Image

    def run(self, job: Job, ctx: RecordingContext | None = None) -> EngineOutput:
        context = ctx or RecordingContext()
        [output] = self.engine.run([job], lambda _job: context)
        return output

    def controlnet(
        self,
        *,
        ctx: RecordingContext | None = None,
        units: tuple[ControlNetUnit, ...] = (ControlNetUnit(CN_A),),
        init: str | None = None,
        control: str | None = None,
        mask: str | None = None,
        guess_mode: bool = False,
        auto_hint: bool = False,
        **generation: Any,
    ) -> EngineOutput:
        """A ControlNet job as the API stores it: the mode from the images given (the picture as the init image when
        none is), the init image as the control picture when there is no control image."""
        if init is None and control is None:
            init = self.picture_key
        mode = (
            ControlNetMode.INPAINT if mask else ControlNetMode.IMG2IMG if init and control else ControlNetMode.TEXT2IMG
        )
        from_image = mode is not ControlNetMode.TEXT2IMG
        params = ControlNetParams(
            generation=generation_params(
                from_image=from_image, init_image_key=init if from_image else None, mask_image_key=mask, **generation
            ),
            units=units,
            control_image_key=control or init or "",
            mode=mode,
            guess_mode=guess_mode,
            auto_hint=auto_hint,
        )
        return self.run(make_job(MODEL, JobKind.CONTROLNET, params), ctx)


def _square_picture() -> Image.Image:
    image = Image.new("RGB", (64, 64), (20, 20, 20))
    image.paste((240, 240, 240), (16, 16, 48, 48))
    return image


def _stripes() -> Image.Image:
    array = np.zeros((64, 64, 3), np.uint8)
    array[:, ::8] = 255
    return Image.fromarray(array, "RGB")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    data_dir = tmp_path_factory.mktemp("controlnet-data")
    models = data_dir / "models"
    make_tiny_model(models, MODEL)
    make_tiny_controlnet(models, CN_A, seed=1)
    make_tiny_controlnet(models, CN_B, seed=2)
    make_tiny_lora(models, LORA)
    make_tiny_embedding(models, EMBEDDING)
    objects = LocalObjectStore(data_dir / "objects", "http://test", b"secret", 3600)

    def put(image: Image.Image) -> str:
        return objects.put(make_object_key("uploads", "png", temp=False), png_bytes(image), "image/png").key

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))  # right half white: repaint it
    picture = _square_picture()
    engine = DiffusionEngine(Settings(data_dir=data_dir), objects)
    return World(models, engine, objects, put(picture), put(_stripes()), put(mask), picture)


def _differ(first: bytes, second: bytes) -> float:
    return float(np.abs(pixels(first) - pixels(second)).mean())


def test_the_controlnet_steers_the_image_and_scale_zero_switches_it_off(world: World) -> None:
    steered = world.controlnet().images[0]
    off = world.controlnet(units=(ControlNetUnit(CN_A, scale=0.0),)).images[0]
    other_hint = world.controlnet(init=world.other_key).images[0]
    assert _differ(steered, off) > 1.0
    # The hint itself matters, not only that a ControlNet ran.
    assert _differ(steered, other_hint) > 0.3
    # At scale 0 the ControlNet adds nothing: the image matches other control pictures at scale 0.
    off_other = world.controlnet(init=world.other_key, units=(ControlNetUnit(CN_A, scale=0.0),)).images[0]
    assert _differ(off, off_other) < 0.5


def test_same_seed_same_bytes_and_each_sample_its_own_seed(world: World) -> None:
    first = world.controlnet(seed=77)
    again = world.controlnet(seed=77)
    assert first.images == again.images
    assert first.meta["seed"] == 77
    batch = world.controlnet(seed=77, samples=2)
    assert len(batch.images) == 2
    assert _differ(batch.images[0], batch.images[1]) > 1.0
    # Sample 0 of a batch is the one-sample image of the same seed (up to batched rounding).
    assert _differ(batch.images[0], first.images[0]) < 2.0


def test_progress_is_reported_and_a_cancel_stops_the_job(world: World) -> None:
    ctx = RecordingContext()
    world.controlnet(ctx=ctx, steps=3)
    assert ctx.steps[-1] == (3, 3)
    with pytest.raises(JobCancelled):
        world.controlnet(ctx=RecordingContext(cancel_at=1), steps=3)


def test_unknown_controlnet_fails_the_job_naming_it(world: World) -> None:
    with pytest.raises(JobFailed) as failed:
        world.controlnet(units=(ControlNetUnit("no-such-cn"),))
    assert failed.value.code == "controlnet_not_found"
    assert "controlnet_model" in failed.value.message and "no-such-cn" in failed.value.message


def test_two_controlnets_with_their_own_scales(world: World) -> None:
    single = world.controlnet(seed=5).images[0]
    multi = world.controlnet(seed=5, units=(ControlNetUnit(CN_A, scale=1.0), ControlNetUnit(CN_B, scale=0.0)))
    both = world.controlnet(seed=5, units=(ControlNetUnit(CN_A, scale=1.0), ControlNetUnit(CN_B, scale=1.0)))
    # B at scale 0 adds nothing: the same as A alone; with B on, the image changes.
    assert _differ(multi.images[0], single) < 0.5
    assert _differ(both.images[0], single) > 1.0
    assert multi.meta["controlnet_model"] == f"{CN_A},{CN_B}"
    assert multi.meta["controlnet_conditioning_scale"] == [1.0, 0.0]


def test_img2img_mode_starts_from_the_init_image(world: World) -> None:
    images = {"init": world.picture_key, "control": world.other_key}
    light = world.controlnet(strength=0.5, seed=3, **images)
    strong = world.controlnet(strength=1.0, seed=3, **images)
    text2img = world.controlnet(control=world.other_key, seed=3)
    assert light.meta["controlnet_mode"] == "img2img"
    assert text2img.meta["controlnet_mode"] == "text2img"
    assert _differ(light.images[0], strong.images[0]) > 1.0
    assert _differ(light.images[0], text2img.images[0]) > 1.0
    # A strength too low for one denoising step keeps the init picture, not the control picture.
    kept = world.controlnet(strength=0.2, seed=3, **images)
    assert np.array_equal(pixels(kept.images[0]), pixels(png_bytes(world.picture)))


def test_inpaint_mode_keeps_the_unmasked_half(world: World) -> None:
    output = world.controlnet(mask=world.mask_key, init=world.picture_key, control=world.other_key, strength=1.0)
    assert output.meta["controlnet_mode"] == "inpaint"
    result, init = pixels(output.images[0]), pixels(png_bytes(world.picture))
    assert np.abs(result[:, :24] - init[:, :24]).max() <= 2
    assert np.abs(result[:, 40:] - init[:, 40:]).mean() > 1.0


def test_auto_hint_makes_canny_edges_and_unsupported_types_fail(world: World) -> None:
    raw = world.controlnet(seed=9).images[0]
    hinted = world.controlnet(seed=9, auto_hint=True, units=(ControlNetUnit(CN_A, "canny"),))
    assert hinted.meta["auto_hint"] == "yes" and hinted.meta["hint_preprocessors"] == ["canny", "ip2p", "tile"]
    assert _differ(raw, hinted.images[0]) > 0.3
    with pytest.raises(JobFailed) as failed:
        world.controlnet(auto_hint=True, units=(ControlNetUnit(CN_A, "depth"),))
    assert "controlnet_type" in failed.value.message and "canny, ip2p, tile" in failed.value.message


def test_canny_hint_draws_the_square_outline_only() -> None:
    edges = np.asarray(canny_hint(_square_picture()).convert("L")) > 0
    assert edges[16:48, 14:19].any() and edges[16:48, 45:50].any()  # left and right sides
    assert not edges[22:42, 22:42].any()  # flat inside
    assert not edges[:8].any() and not edges[:, :8].any()  # flat outside
    assert set(np.unique(np.asarray(canny_hint(_square_picture())))) <= {0, 255}


def test_the_engine_keeps_controlnets_loaded_and_clear_drops_them(world: World) -> None:
    world.controlnet()
    assert CN_A in world.engine._controlnets.held()
    world.engine.clear()
    assert world.engine._controlnets.held() == frozenset()
    assert JobKind.CONTROLNET in world.engine.kinds()


def test_outputs_carry_the_controlnet_in_their_png_parameters(world: World) -> None:
    output = world.controlnet(units=(ControlNetUnit(CN_A, scale=0.5),))
    with Image.open(io.BytesIO(output.images[0])) as image:
        parameters = image.info["parameters"]
    assert "ControlNet: " in parameters and f"{CN_A} (none, weight 0.5)" in parameters and "Seed: 1234" in parameters
    assert output.meta["nsfw_content_detected"] is False


def test_png_parameters_list_every_generation_setting_then_the_controlnet(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One builder writes what every generation writes (embeddings and token merging too), then ControlNet adds its
    own entries."""
    # The tiny UNet has attention only below full resolution; reach it so token merging applies.
    monkeypatch.setattr(addons_module, "TOME_MAX_DOWNSAMPLE", 2)
    output = world.controlnet(
        prompt=f"a photo of {EMBEDDING} cat",
        clip_skip=2,
        loras=((LORA, 0.5),),
        embeddings=(EMBEDDING,),
        tomesd=True,
        guess_mode=True,
    )
    assert output.meta["tomesd"] == "yes"
    with Image.open(io.BytesIO(output.images[0])) as image:
        parameters = image.info["parameters"]
    assert parameters.splitlines() == [
        f"a photo of {EMBEDDING} cat",
        "Steps: 2, Sampler: EulerDiscreteScheduler, CFG scale: 7.5, Seed: 1234, Size: 64x64, Model: tiny-sd, "
        f'Clip skip: 2, Lora: "{LORA}: 0.5", Embeddings: {EMBEDDING}, Token merging ratio: 0.5, '
        f'ControlNet: "{CN_A} (none, weight 1)", Guess mode: True',
    ]


def test_a_lora_applies_to_controlnet_jobs_and_is_taken_off_after(world: World) -> None:
    plain = world.controlnet(seed=11).images[0]
    with_lora = world.controlnet(seed=11, loras=((LORA, 1.0),)).images[0]
    after = world.controlnet(seed=11).images[0]
    assert _differ(plain, with_lora) > 0.3
    assert pixels(after).tolist() == pixels(plain).tolist()


def test_a_replaced_controlnet_is_read_again(world: World) -> None:
    make_tiny_controlnet(world.models, "tiny-cn-swap", seed=1)
    before = world.controlnet(units=(ControlNetUnit("tiny-cn-swap"),)).images[0]
    same_as_a = world.controlnet().images[0]
    make_tiny_controlnet(world.models, "tiny-cn-swap", seed=2)
    after = world.controlnet(units=(ControlNetUnit("tiny-cn-swap"),)).images[0]
    assert pixels(before).tolist() == pixels(same_as_a).tolist()  # same seed, same weights as tiny-cn-a
    assert _differ(before, after) > 0.3
