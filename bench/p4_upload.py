"""P4: upload_image of a 1 MB PNG at 8 concurrent clients against the in-process floor for the same bytes."""

from __future__ import annotations

import asyncio
import base64
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.common import RunContext, Server, check_success, median, new_data_dir, noise_png, quantile, result, serve

# 576×576 RGB noise compresses to nothing: the PNG is about 1 MB.
SIDE = 576
CLIENTS = 8


def upload_path(server: Server) -> str:
    return f"{server.url}/api/v1/enterprise/upload_image"


async def upload_many(server: Server, payload: str, count: int, clients: int) -> tuple[list[float], float]:
    """`count` uploads spread over `clients` concurrent connections: (latencies, wall seconds)."""
    latencies: list[float] = []
    remaining = iter(range(count))

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(trust_env=False, timeout=60, limits=limits) as client:
        body = {"key": server.key, "base64_image": payload, "image_type": "png"}

        async def client_loop() -> None:
            for _ in remaining:
                started = time.perf_counter()
                reply = await client.post(upload_path(server), json=body)
                latencies.append(time.perf_counter() - started)
                check_success(reply.json(), "upload_image")

        # The client is made before the clock starts: creating one costs ~0.3 s (its SSL context).
        started = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(clients)))
        return latencies, time.perf_counter() - started


def floor_once(payload: str, root: Path) -> float:
    """What an upload must do at least: base64 decode, format sniff + full decode check, write to storage."""
    from sdserver.images import ImageLimits, decode_base64_payload, inspect_image
    from sdserver.objects.base import make_object_key
    from sdserver.objects.local import LocalObjectStore

    store = LocalObjectStore(root, "http://127.0.0.1", b"bench-secret", 3600)
    limits = ImageLimits(max_bytes=64 * 2**20, max_pixels=64 * 2**20)
    started = time.perf_counter()
    data = decode_base64_payload(payload, field="base64_image")
    image = inspect_image(data, limits, field="base64_image")
    store.put(make_object_key("uploads", image.ext, temp=False), image.data, image.content_type)
    return time.perf_counter() - started


def run(ctx: RunContext) -> dict[str, Any]:
    png = noise_png(SIDE)
    payload = base64.b64encode(png).decode()
    count = 40 if ctx.quick else 200
    floors = 10 if ctx.quick else 50
    with tempfile.TemporaryDirectory(dir=ctx.workdir) as folder:
        floor_once(payload, Path(folder))  # warm-up: imports, first file
        serial = [floor_once(payload, Path(folder)) for _ in range(floors)]
        # The baseline runs at the same concurrency as the clients: per-request latency on a shared CPU.
        with ThreadPoolExecutor(CLIENTS) as pool:
            floor = list(pool.map(lambda _: floor_once(payload, Path(folder)), range(count)))
    with serve(new_data_dir(ctx, "p4"), workers=0) as server:
        asyncio.run(upload_many(server, payload, CLIENTS, CLIENTS))  # warm-up: connections, first writes
        latencies, wall = asyncio.run(upload_many(server, payload, count, CLIENTS))
    p50 = median(latencies)
    ratio = p50 / median(floor)
    return result(
        "P4",
        f"upload_image p50 latency, {len(png) / 1e6:.2f} MB PNG, {CLIENTS} concurrent clients",
        f"in-process floor at {CLIENTS} threads: base64 decode + sniff + decode check + write of the same bytes",
        ratio,
        "≤ 2.0",
        ratio <= 2.0,
        limit=2.0,
        p50_ms=1000 * p50,
        p99_ms=1000 * quantile(latencies, 0.99),
        requests_per_s=count / wall,
        floor_median_ms=1000 * median(floor),
        floor_serial_median_ms=1000 * median(serial),
        png_bytes=len(png),
        uploads=count,
    )
