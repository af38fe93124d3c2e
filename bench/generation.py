"""P1/P2 shared parts: the generation server (one real worker), the bare diffusers pipeline, identical job params."""

from __future__ import annotations

import base64
import contextlib
import io
import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.common import (
    SD15_HALF_MODEL,
    SD15_MODEL,
    SEED,
    RunContext,
    Server,
    check_success,
    link_model,
    new_data_dir,
    serve,
    smooth_png,
)
from bench.models import model_folder, quiet

PROMPT = "a photo of a red house by a tree"
SCHEDULER = "PNDMScheduler"
GUIDANCE = 7.5
# strength 1.0: every one of the requested steps runs (img2img runs steps × strength of them).
STRENGTH = 1.0
JOB_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class JobShape:
    side: int
    steps: int
    # The model id the server knows it by; the bare pipeline loads the same folder.
    model: str = SD15_MODEL


# Model id on the server → variant of bench.models.model_folder.
VARIANTS = {SD15_MODEL: "sd15", SD15_HALF_MODEL: "sd15-half"}


def gen_server(ctx: RunContext) -> Server:
    """`sdserver serve` with one worker and this run's models (built on first use, linked in under their ids);
    requests wait for their job (sync answer)."""

    stack = contextlib.ExitStack()

    def start() -> Server:
        data_dir = new_data_dir(ctx, "gen")
        for model_id, variant in VARIANTS.items():
            link_model(model_folder(ctx, variant)[0], data_dir, model_id)
        return stack.enter_context(serve(data_dir, workers=1, sync_wait_s=300))

    server: Server = ctx.shared("gen-server", start, close=stack.close)
    return server


def bare_pipeline(ctx: RunContext, model: str = SD15_MODEL) -> Any:
    """The same weights in the bare diffusers img2img pipeline, at the precision the worker picks."""

    def load() -> Any:
        from diffusers import StableDiffusionImg2ImgPipeline

        from sdserver.engines.precision import choose_placement

        folder, _ = model_folder(ctx, VARIANTS[model])
        quiet()
        placement = choose_placement("auto")
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
            folder, dtype=placement.dtype, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(placement.device), placement.precision

    return ctx.shared(f"bare-pipeline-{model}", load)


def init_image(side: int, index: int = 0) -> str:
    return smooth_png(side, SEED + index)


def api_body(server: Server, shape: JobShape, index: int) -> dict[str, Any]:
    return {
        "key": server.key,
        "model_id": shape.model,
        "prompt": PROMPT,
        "init_image": init_image(shape.side, index),
        "width": shape.side,
        "height": shape.side,
        "samples": 1,
        "num_inference_steps": shape.steps,
        "strength": STRENGTH,
        "guidance_scale": GUIDANCE,
        "scheduler": SCHEDULER,
        "seed": SEED + index,
        # ModelsLab defaults both to yes; the bare pipeline does neither, so the same work means both off. The
        # safety screen stays at its default (on): it is serving work the product does on every image.
        "enhance_prompt": "no",
        "tomesd": "no",
    }


async def api_job(client: httpx.AsyncClient, server: Server, shape: JobShape, index: int) -> bytes:
    """Submit one img2img job and wait for it (sync answer, then fetch while still processing); the output PNG."""
    url = f"{server.url}/api/v1/enterprise/img2img"
    reply = (await client.post(url, json=api_body(server, shape, index), timeout=JOB_TIMEOUT_S)).json()
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while reply.get("status") == "processing" and time.monotonic() < deadline:
        fetch = f"{server.url}/api/v1/enterprise/fetch/{reply['id']}"
        reply = (await client.post(fetch, json={"key": server.key}, timeout=JOB_TIMEOUT_S)).json()
    check_success(reply, "img2img")
    output = reply["output"]
    image = await client.get(output if isinstance(output, str) else output[0])
    image.raise_for_status()
    return image.content


def bare_job(pipe: Any, shape: JobShape, index: int) -> Image.Image:
    """The same job on the bare pipeline: same init image, prompt, scheduler, steps, strength, guidance, seed."""
    import torch
    from diffusers import PNDMScheduler

    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config)
    image = Image.open(io.BytesIO(base64.b64decode(init_image(shape.side, index)))).convert("RGB")
    generator = torch.Generator("cpu").manual_seed(SEED + index)
    with torch.inference_mode():
        out = pipe(
            prompt=PROMPT,
            image=image,
            strength=STRENGTH,
            num_inference_steps=shape.steps,
            guidance_scale=GUIDANCE,
            generator=[generator],
        )
    picture: Image.Image = out.images[0]
    return picture


def mean_abs_diff(png: bytes, image: Image.Image) -> float:
    """Mean absolute pixel difference (0–255): shows the two paths computed the same image."""
    with Image.open(io.BytesIO(png)) as served:
        a = np.asarray(served.convert("RGB"), dtype=np.float32)
    return float(np.abs(a - np.asarray(image.convert("RGB"), dtype=np.float32)).mean())
