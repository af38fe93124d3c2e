"""P5: API process footprint: RSS after start and after 1000 uploads, start-to-ready time, libtorch never mapped."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from bench.common import RunContext, maps_torch, new_data_dir, noise_png, result, rss_mib, serve
from bench.p4_upload import CLIENTS, SIDE, upload_many

RSS_LIMIT_MIB = 150.0
READY_LIMIT_S = 2.0


def run(ctx: RunContext) -> dict[str, Any]:
    count = 50 if ctx.quick else 1000
    payload = base64.b64encode(noise_png(SIDE)).decode()
    # No workers: the API process alone (workers are separate processes with their own footprint).
    with serve(new_data_dir(ctx, "p5"), workers=0) as server:
        rss_start = rss_mib(server.pid)
        torch_at_start = maps_torch(server.pid)
        asyncio.run(upload_many(server, payload, count, CLIENTS))
        rss_end = rss_mib(server.pid)
        torch_at_end = maps_torch(server.pid)
        ready_s = server.ready_s
    worst_rss = max(rss_start or 0.0, rss_end or 0.0)
    torch_seen = torch_at_start or torch_at_end
    met = worst_rss <= RSS_LIMIT_MIB and ready_s <= READY_LIMIT_S and not torch_seen
    # No baseline exists for a footprint: the ratio is the worst share of a budget used (≤ 1 meets every goal).
    ratio = max(worst_rss / RSS_LIMIT_MIB, ready_s / READY_LIMIT_S)
    return result(
        "P5",
        f"API process RSS after start and after {count} uploads; start-to-ready; libtorch mapped",
        f"the goals themselves (ratio = worst of RSS/{RSS_LIMIT_MIB:.0f} MiB and ready/{READY_LIMIT_S:.0f} s)",
        ratio,
        f"RSS ≤ {RSS_LIMIT_MIB:.0f} MiB, ready ≤ {READY_LIMIT_S:.0f} s, torch never",
        met,
        limit=1.0,
        rss_after_start_mib=rss_start,
        rss_after_uploads_mib=rss_end,
        start_to_ready_s=ready_s,
        torch_mapped=torch_seen,
        uploads=count,
    )
