"""P1: one img2img round trip through the HTTP API and a real worker against the bare diffusers pipeline."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from bench.common import RunContext, median, result
from bench.generation import JobShape, api_job, bare_job, bare_pipeline, gen_server, mean_abs_diff


def shape_for(ctx: RunContext) -> JobShape:
    if ctx.quick:
        return JobShape(side=64, steps=2)
    return JobShape(side=512, steps=25) if ctx.gpu else JobShape(side=256, steps=8)


def run(ctx: RunContext) -> dict[str, Any]:
    shape = shape_for(ctx)
    # 2 timed pairs: an SD 1.5 job at 256×256, 8 steps takes ~50 s in fp32 on 2 cores (the 15-minute budget).
    repeats = 1 if ctx.quick else 2
    warm_shape = JobShape(side=64, steps=1)
    server = gen_server(ctx)
    pipe, precision = bare_pipeline(ctx)

    def bare_once(index: int, job: JobShape = shape) -> tuple[float, Any]:
        started = time.perf_counter()
        image = bare_job(pipe, job, index)
        return time.perf_counter() - started, image

    async def measure() -> tuple[list[float], list[float], dict[str, Any]]:
        # One client made before any timing: creating an httpx client costs ~0.3 s (its SSL context).
        async with httpx.AsyncClient(trust_env=False) as client:

            async def api_once(index: int, job: JobShape = shape) -> tuple[float, bytes]:
                started = time.perf_counter()
                png = await api_job(client, server, job, index)
                return time.perf_counter() - started, png

            # Warm-ups, small and untimed: the worker loads the model on its first job, both sides init once.
            warm_api_s, _ = await api_once(0, warm_shape)
            warm_bare_s, _ = bare_once(0, warm_shape)
            api_times, bare_times = [], []
            # Interleaved, so slow phases of a noisy machine hit both sides alike.
            for _ in range(repeats):
                bare_s, image = bare_once(0)
                bare_times.append(bare_s)
                api_s, png = await api_once(0)
                api_times.append(api_s)
        warm = {"warmup_api_s": warm_api_s, "warmup_bare_s": warm_bare_s, "png": png, "image": image}
        return api_times, bare_times, warm

    api_times, bare_times, warm = asyncio.run(measure())
    ratio = median(api_times) / median(bare_times)
    limit = 1.02 if ctx.gpu else 1.05
    return result(
        "P1",
        f"img2img round trip via HTTP API + worker, {shape.side}×{shape.side}, {shape.steps} steps",
        "bare diffusers img2img pipeline, same params and seed, in one process",
        ratio,
        f"≤ {limit}",
        ratio <= limit,
        limit=limit,
        api_median_s=median(api_times),
        bare_median_s=median(bare_times),
        api_times_s=api_times,
        bare_times_s=bare_times,
        warmup_api_s=warm["warmup_api_s"],
        warmup_bare_s=warm["warmup_bare_s"],
        precision=precision,
        output_mean_abs_diff=mean_abs_diff(warm["png"], warm["image"]),
        repeats=repeats,
    )
