"""P8: one UNet step (SD-1.5-shaped, 256×256, batch 2) at the worker's chosen precision against fp32."""

from __future__ import annotations

import time
from typing import Any

from bench.common import SEED, RunContext, median, result
from bench.models import model_folder

SPEEDUP_GOAL = 2.5


def step_times(unet: Any, inputs: tuple[Any, Any, Any], repeats: int) -> tuple[list[float], Any]:
    import torch

    sample, timestep, context = inputs
    with torch.inference_mode():
        out = unet(sample, timestep, encoder_hidden_states=context).sample  # warm-up
        times = []
        for _ in range(repeats):
            if sample.device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            out = unet(sample, timestep, encoder_hidden_states=context).sample
            if sample.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
    return times, out.float()


def run(ctx: RunContext) -> dict[str, Any]:
    import torch
    from diffusers import UNet2DConditionModel

    from sdserver.engines.precision import choose_placement, cpu_has_native_bf16

    folder, kind = model_folder(ctx)
    placement = choose_placement("auto")
    side, batch = (64, 2) if ctx.quick else (256, 2)
    repeats = 2 if ctx.quick else 3
    unet: Any = UNet2DConditionModel.from_pretrained(folder / "unet").eval().to(placement.device)
    generator = torch.Generator("cpu").manual_seed(SEED)
    latent = side // 8
    sample = torch.randn(batch, unet.config.in_channels, latent, latent, generator=generator)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=generator)
    timestep = torch.tensor(500)

    def on(dtype: Any) -> tuple[Any, Any, Any]:
        return sample.to(placement.device, dtype), timestep.to(placement.device), context.to(placement.device, dtype)

    fp32_times, fp32_out = step_times(unet, on(torch.float32), repeats)
    if placement.dtype == torch.float32:
        # No native bf16 here: the worker runs fp32, so the chosen step *is* the baseline (speed-up 1 by definition;
        # emulated bf16 is many times slower and no worker would pick it).
        chosen_times, chosen_out = fp32_times, fp32_out
    else:
        chosen_times, chosen_out = step_times(unet.to(placement.dtype), on(placement.dtype), repeats)
    del unet
    speedup = median(fp32_times) / median(chosen_times)
    difference = float((chosen_out - fp32_out).norm() / fp32_out.norm())
    return result(
        "P8",
        f"UNet step ({kind}), {side}×{side}, batch {batch}, at the worker's precision ({placement.precision})",
        "the same step in fp32",
        speedup,
        f"≥ {SPEEDUP_GOAL}× faster",
        speedup >= SPEEDUP_GOAL,
        limit=SPEEDUP_GOAL,
        better="higher",
        chosen_median_s=median(chosen_times),
        fp32_median_s=median(fp32_times),
        precision=placement.precision,
        native_bf16=cpu_has_native_bf16(),
        relative_output_difference=difference,
        repeats=repeats,
    )
