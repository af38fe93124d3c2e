"""P9: 16 concurrent same-shape jobs through the API and one worker, cross-request batching on vs off."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx

from bench.common import SD15_HALF_MODEL, RunContext, Server, link_model, new_data_dir, quantile, result, serve
from bench.generation import VARIANTS, JobShape, api_job
from bench.models import model_folder

JOBS = 16
# Single-job latency: the median of this many jobs run one at a time (warm).
SINGLES = 3


def plan(ctx: RunContext) -> JobShape:
    """CPU: the SD 1.5 layout at half the UNet widths, 64×64, 2 steps (P2's shape: 16 jobs a side fit the budget);
    GPU: the full SD 1.5 layout at 512×512, 25 steps. --quick: the tiny model."""
    if ctx.gpu:
        return JobShape(side=512, steps=25)
    return JobShape(side=64, steps=2, model=SD15_HALF_MODEL)


def _server(ctx: RunContext, shape: JobShape, max_batch: int) -> contextlib.AbstractContextManager[Server]:
    data_dir = new_data_dir(ctx, f"p9-batch{max_batch}")
    link_model(model_folder(ctx, VARIANTS[shape.model])[0], data_dir, shape.model)
    env = {"SDSERVER_MAX_BATCH": str(max_batch)}
    return serve(data_dir, workers=1, sync_wait_s=300, env=env)


async def _measure(server: Server, shape: JobShape) -> dict[str, Any]:
    """Warm-up, single-job latencies, then JOBS jobs submitted at once: wall time and per-job latencies."""
    limits = httpx.Limits(max_connections=JOBS + 4)
    async with httpx.AsyncClient(trust_env=False, limits=limits) as client:
        await api_job(client, server, shape, 0)
        singles = []
        for index in range(SINGLES):
            started = time.perf_counter()
            await api_job(client, server, shape, 100 + index)
            singles.append(time.perf_counter() - started)

        async def timed(index: int) -> float:
            started = time.perf_counter()
            await api_job(client, server, shape, index)
            return time.perf_counter() - started

        started = time.perf_counter()
        latencies = await asyncio.gather(*(timed(index) for index in range(JOBS)))
        wall = time.perf_counter() - started
    return {"wall_s": wall, "latencies": list(latencies), "single_s": sorted(singles)[len(singles) // 2]}


def run(ctx: RunContext) -> dict[str, Any]:
    shape = plan(ctx)
    _folder, built = model_folder(ctx, VARIANTS[shape.model])
    figures = {}
    # Batching on: every job can join one batch (SDSERVER_MAX_BATCH=16); off: one job per pipeline call.
    for label, max_batch in (("off", 1), ("on", JOBS)):
        with _server(ctx, shape, max_batch) as server:
            figures[label] = asyncio.run(_measure(server, shape))
    on, off = figures["on"], figures["off"]
    ratio = off["wall_s"] / on["wall_s"]
    p99_on = quantile(on["latencies"], 0.99)
    p99_vs_single = p99_on / on["single_s"]
    if ctx.gpu:
        goal, met = "≥ 2.0 (p99 ≤ 1.5× a single job)", ratio >= 2.0 and p99_vs_single <= 1.5
    else:
        goal, met = "reported (CPU)", None
    return result(
        "P9",
        f"throughput, {JOBS} concurrent img2img jobs {shape.side}px, {shape.steps} steps, batching on"
        + {"tiny": ", tiny model", "sd15-half": ", UNet at half width"}.get(built, ""),
        "the same jobs on the same worker with batching off (max_batch 1)",
        ratio,
        goal,
        met,
        limit=2.0 if ctx.gpu else None,
        better="higher",
        jobs_per_s_on=JOBS / on["wall_s"],
        jobs_per_s_off=JOBS / off["wall_s"],
        p99_on_s=p99_on,
        p99_off_s=quantile(off["latencies"], 0.99),
        single_job_s=on["single_s"],
        p99_on_vs_single=p99_vs_single,
        model=shape.model,
        model_build=built,
        jobs=JOBS,
    )
