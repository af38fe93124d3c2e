"""Device speed-ups: VAE tiling switched by image size, and torch.compile of the denoiser (traced with the `eager`
backend here: the wiring and the warm-up are the same as inductor's) giving the same pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sdserver.config import Settings
from sdserver.engines.diffusion.acceleration import compile_denoiser, tile_vae_for
from sdserver.engines.diffusion.engine import DiffusionEngine
from sdserver.jobs import JobKind
from sdserver.objects.local import LocalObjectStore
from tests.support.tiny_addons import make_tiny_vae
from tests.support.tiny_sd import RecordingContext, make_job, make_tiny_model, pixels

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

MODEL = "tiny-fast"


def _engine(data_dir: Path, **settings: object) -> DiffusionEngine:
    objects = LocalObjectStore(data_dir / "objects", "http://test", b"secret", 3600)
    return DiffusionEngine(Settings(data_dir=data_dir, **settings), objects)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fast")
    make_tiny_model(folder / "models", MODEL)
    make_tiny_vae(folder / "models", "other-vae", seed=5)
    return folder


def _run(engine: DiffusionEngine, size: int = 64, **fields: object) -> np.ndarray:
    job = make_job(MODEL, JobKind.TEXT2IMG, width=size, height=size, **fields)
    [output] = engine.run([job], lambda _job: RecordingContext())
    return pixels(output.images[0])


def test_the_vae_tiles_only_images_above_the_threshold(data_dir: Path) -> None:
    engine = _engine(data_dir, vae_tile_pixels=96 * 96)
    _run(engine, 64)
    [model] = engine._loaded.values()
    vae = model.pipelines[JobKind.TEXT2IMG].vae
    assert vae.use_tiling is False
    assert _run(engine, 128).shape == (128, 128, 3)
    assert vae.use_tiling is True
    _run(engine, 64)
    assert vae.use_tiling is False
    # The rule itself, on any pipeline-like object.
    assert tile_vae_for(model.pipelines[JobKind.TEXT2IMG], 4096, 4096) is True
    assert tile_vae_for(object(), 4096, 4096) is False


def test_a_swapped_vae_tiles_as_the_model_vae_would(data_dir: Path) -> None:
    engine = _engine(data_dir, vae_tile_pixels=96 * 96)
    assert _run(engine, 128, vae="other-vae").shape == (128, 128, 3)
    [model] = engine._loaded.values()
    [swapped] = model.addons.vaes.values()
    assert swapped is not model.pipelines[JobKind.TEXT2IMG].vae
    assert swapped.use_tiling is True
    # The cached VAE follows the next job's size, not the last one's.
    _run(engine, 64, vae="other-vae")
    assert swapped.use_tiling is False


def test_a_compiled_denoiser_is_warmed_up_at_load_and_draws_the_same_picture(data_dir: Path) -> None:
    plain = _run(_engine(data_dir))
    engine = _engine(data_dir, torch_compile="eager")
    compiled = _run(engine)
    [model] = engine._loaded.values()
    for pipeline in model.pipelines.values():
        assert isinstance(pipeline.unet, torch._dynamo.eval_frame.OptimizedModule)  # every pipeline shares it
    assert np.abs(compiled - plain).mean() <= 1.0


def test_compile_denoiser_names_what_it_compiled() -> None:
    class Holder:
        unet = torch.nn.Linear(2, 2)
        vae = torch.nn.Linear(2, 2)

    holder = Holder()
    assert compile_denoiser(holder, "eager") == ["unet"]
    assert isinstance(holder.unet, torch._dynamo.eval_frame.OptimizedModule)
    assert not isinstance(holder.vae, torch._dynamo.eval_frame.OptimizedModule)
