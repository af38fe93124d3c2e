"""Benchmark models: an SD-1.5-shaped diffusers folder with seeded random weights (from the bundled SD 1.5 configs),
and the tiny test model for --quick runs. Built once per run and shared."""

from __future__ import annotations

import gc
import shutil
import time
from pathlib import Path
from typing import Any

from bench.common import SEED, TINY_MODEL, RunContext

SD15_CONFIGS = Path(__file__).resolve().parents[1] / "src" / "sdserver" / "engines" / "diffusion" / "configs" / "sd15"


def quiet() -> None:
    """No per-component progress bars in the bench output (the engine does the same in workers)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def write_sd15(folder: Path, seed: int = SEED, unet_width: float = 1.0) -> Path:
    """A diffusers folder with the real SD 1.5 architecture (UNet 860M, VAE 84M, CLIP-L 123M parameters) and
    seeded random weights: compute cost is the real model's; the images are noise. About 4 GB on disk.

    `unet_width` scales the UNet's channel widths (0.5: the same layout with 220M parameters, a quarter of the
    compute), for benchmarks that need many jobs in the time budget."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    shutil.copytree(SD15_CONFIGS, folder)
    # One component at a time, freed before the next: peak memory is the UNet's 3.4 GB, not all 4.
    torch.manual_seed(seed)
    config: Any = UNet2DConditionModel.load_config(folder / "unet")
    if unet_width != 1.0:
        config["block_out_channels"] = [int(width * unet_width) for width in config["block_out_channels"]]
    unet: Any = UNet2DConditionModel.from_config(config)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    del unet
    gc.collect()
    vae: Any = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    del vae
    text = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    text.save_pretrained(folder / "text_encoder", safe_serialization=True)
    del text
    gc.collect()
    return folder


def model_folder(ctx: RunContext, variant: str = "sd15") -> tuple[Path, str]:
    """A generation model of this run, built on first use: "sd15" (SD-1.5-shaped), "sd15-half" (the same layout at
    half the UNet widths), or the tiny model for either with --quick. Returns (folder, kind)."""

    def build() -> tuple[Path, str]:
        quiet()
        started = time.perf_counter()
        if ctx.quick:
            from sdserver.engines.diffusion.tiny import make_tiny_model

            folder = make_tiny_model(ctx.workdir / "models", f"{TINY_MODEL}-{variant}", seed=SEED)
            kind = "tiny"
        else:
            folder = write_sd15(ctx.workdir / "models" / variant, unet_width=0.5 if variant == "sd15-half" else 1.0)
            kind = variant
        print(f"  built {kind} model in {time.perf_counter() - started:.1f} s: {folder}", flush=True)
        return folder, kind

    folder, kind = ctx.shared(f"model-{variant}", build)
    return folder, kind


def tiny_folders(ctx: RunContext, count: int) -> list[Path]:
    """`count` tiny models with different seeds (P7's mixed jobs over several models)."""
    from sdserver.engines.diffusion.tiny import make_tiny_model

    def build() -> list[Path]:
        return [make_tiny_model(ctx.workdir / "tiny", f"tiny-{index}", seed=index) for index in range(count)]

    folders: list[Path] = ctx.shared(f"tiny-{count}", build)
    return folders
