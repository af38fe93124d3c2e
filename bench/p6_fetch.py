"""P6: fetch latency p50/p99 with 50 concurrent pollers while the worker runs jobs."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import httpx
import numpy as np

from bench.common import SEED, RunContext, Server, link_model, median, new_data_dir, quantile, result, serve
from bench.models import tiny_folders

POLLERS = 50
# Each poller asks every 0.5 s (clients poll; they do not spin): 100 fetches/s in all.
POLL_INTERVAL_S = 0.5
LIMIT_MS = 25.0
MODEL = "p6-tiny"


async def keep_busy(
    client: httpx.AsyncClient, server: Server, ids: list[str], first: asyncio.Event, stop: asyncio.Event
) -> int:
    """Keep two generation jobs queued or running until `stop`; `ids[-1]` is always one in flight."""
    body = {"key": server.key, "model_id": MODEL, "prompt": "a red house", "width": 256, "height": 256}
    body |= {"num_inference_steps": 30, "samples": 1, "seed": SEED}
    pending: list[str] = []
    submitted = 0
    while not stop.is_set():
        while len(pending) < 2:
            reply = (await client.post(f"{server.url}/api/v1/enterprise/text2img", json=body)).json()
            if reply.get("status") not in ("processing", "success"):
                raise RuntimeError(f"text2img: {reply}")
            pending.append(str(reply["id"]))
            ids.append(str(reply["id"]))
            first.set()
            submitted += 1
        fetch = f"{server.url}/api/v1/enterprise/fetch/{pending[0]}"
        state = (await client.post(fetch, json={"key": server.key})).json().get("status")
        if state != "processing":
            pending.pop(0)
        await asyncio.sleep(0.2)
    return submitted


async def poll(
    client: httpx.AsyncClient, server: Server, ids: list[str], until: float, latencies: list[float], offset: float
) -> None:
    await asyncio.sleep(offset)
    while time.monotonic() < until:
        started = time.perf_counter()
        reply = await client.post(f"{server.url}/api/v1/enterprise/fetch/{ids[-1]}", json={"key": server.key})
        latencies.append(time.perf_counter() - started)
        if reply.status_code != 200:
            raise RuntimeError(f"fetch answered {reply.status_code}")
        await asyncio.sleep(max(0.0, POLL_INTERVAL_S - (time.perf_counter() - started)))


def run(ctx: RunContext) -> dict[str, Any]:
    duration = 4.0 if ctx.quick else 20.0
    data_dir = new_data_dir(ctx, "p6")
    link_model(tiny_folders(ctx, 1)[0], data_dir, MODEL)
    latencies: list[float] = []

    async def scenario(server: Server) -> int:
        ids: list[str] = []
        stop = asyncio.Event()
        # One client, a connection per poller, made before any timing (a client costs ~0.3 s to create).
        limits = httpx.Limits(max_connections=POLLERS + 4)
        async with httpx.AsyncClient(trust_env=False, timeout=60, limits=limits) as client:
            first = asyncio.Event()
            busy = asyncio.create_task(keep_busy(client, server, ids, first, stop))
            await first.wait()
            await asyncio.sleep(1.0)  # the worker has picked up the first job
            # This process built the tiny model (torch, diffusers: ~10^6 objects): a full collection here stalls the
            # pollers for up to ~250 ms, which the latencies would blame on the server. Frozen, they are not scanned.
            gc.collect()
            gc.freeze()
            offsets = np.random.default_rng(SEED).uniform(0, POLL_INTERVAL_S, POLLERS)
            until = time.monotonic() + duration
            await asyncio.gather(*(poll(client, server, ids, until, latencies, offset) for offset in offsets))
            stop.set()
            return await busy

    with serve(data_dir, workers=1) as server:
        jobs = asyncio.run(scenario(server))
    p99 = quantile(latencies, 0.99)
    return result(
        "P6",
        f"fetch latency, {POLLERS} pollers every {POLL_INTERVAL_S} s for {duration:.0f} s while jobs run",
        f"the goal (ratio = p99 / {LIMIT_MS:.0f} ms)",
        1000 * p99 / LIMIT_MS,
        f"p99 ≤ {LIMIT_MS:.0f} ms",
        1000 * p99 <= LIMIT_MS,
        limit=1.0,
        p50_ms=1000 * median(latencies),
        p99_ms=1000 * p99,
        fetches=len(latencies),
        jobs_submitted=jobs,
    )
