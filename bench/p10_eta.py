"""P10: how true the ETA is: median |eta − actual| / actual over a mixed burst of jobs (models, sizes, steps).

The server learns each model's cost from a short warm-up (two sizes per model, as any server that has run a few
jobs knows), then a burst of mixed jobs is submitted at once. Right after the burst each job is fetched once, as a
polling client does; the `eta` of that fetch is compared with the job's real time from that fetch to its finish
(the job store's own timestamp). The ETAs the submit replies gave are reported beside it: they cannot foresee
jobs submitted later that join an earlier job's batch and so finish first.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import SEED, RunContext, Server, check_success, link_model, median, new_data_dir, result, serve
from bench.models import tiny_folders

MODELS = ("p10-a", "p10-b")
SIZES = (128, 192, 256)
STEPS = (10, 20, 30)
LIMIT = 0.25
JOB_TIMEOUT_S = 900.0


def body(server: Server, model: str, size: int, steps: int, seed: int) -> dict[str, Any]:
    return {
        "key": server.key,
        "model_id": model,
        "prompt": "a red house",
        "width": size,
        "height": size,
        "num_inference_steps": steps,
        "samples": 1,
        "seed": seed,
    }


async def warm_up(client: httpx.AsyncClient, server: Server) -> None:
    """Two sizes per model, one after the other, each waited for: the measurements the ETA starts from."""
    for model in MODELS:
        for size in (SIZES[0], SIZES[-1]):
            reply = (
                await client.post(f"{server.url}/api/v1/enterprise/text2img", json=body(server, model, size, 10, SEED))
            ).json()
            await wait(client, server, str(reply["id"]))


async def wait(client: httpx.AsyncClient, server: Server, job_id: str) -> None:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        reply = (await client.post(f"{server.url}/api/v1/enterprise/fetch/{job_id}", json={"key": server.key})).json()
        if reply.get("status") != "processing":
            check_success(reply, f"job {job_id}")
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"P10 job {job_id} still running after {JOB_TIMEOUT_S:.0f} s")


async def burst(server: Server, count: int) -> tuple[list[tuple[int, int]], list[tuple[int, int, datetime]]]:
    """Warm up, submit `count` mixed jobs at once, fetch each once, wait for all: (job id, eta at submit) and
    (job id, eta at the fetch, when the fetch was sent) per job."""
    rng = np.random.default_rng(SEED)
    promised: list[tuple[int, int]] = []
    polled: list[tuple[int, int, datetime]] = []
    async with httpx.AsyncClient(trust_env=False, timeout=120) as client:
        await warm_up(client, server)
        for index in range(count):
            model = MODELS[int(rng.integers(len(MODELS)))]
            size, steps = int(rng.choice(SIZES)), int(rng.choice(STEPS))
            url = f"{server.url}/api/v1/enterprise/text2img"
            reply = (await client.post(url, json=body(server, model, size, steps, SEED + index))).json()
            if reply.get("status") != "processing":
                raise RuntimeError(f"text2img: {reply}")
            promised.append((int(reply["id"]), int(reply["eta"])))
        for job_id, _ in promised:
            sent = datetime.now(UTC)
            fetch = f"{server.url}/api/v1/enterprise/fetch/{job_id}"
            reply = (await client.post(fetch, json={"key": server.key})).json()
            if reply.get("status") == "processing":
                polled.append((job_id, int(reply["eta"]), sent))
        for job_id, _ in promised:
            await wait(client, server, str(job_id))
    return promised, polled


def finish_times(data_dir: Path, ids: list[int]) -> dict[int, tuple[datetime, datetime]]:
    """(submitted, finished) of each job, from the job store's own timestamps."""
    from sdserver.database import create_db_engine
    from sdserver.jobstore.store import JobStore

    db = create_db_engine(f"sqlite:///{(data_dir / 'sdserver.db').resolve()}")
    store = JobStore(db)
    try:
        times = {}
        for job_id in ids:
            job = store.get(job_id, owner_key_id=None)
            assert job.finished_at is not None
            times[job_id] = (job.created_at.astimezone(UTC), job.finished_at.astimezone(UTC))
        return times
    finally:
        store.close()
        db.dispose()


def run(ctx: RunContext) -> dict[str, Any]:
    count = 4 if ctx.quick else 16
    data_dir = new_data_dir(ctx, "p10")
    for folder, model in zip(tiny_folders(ctx, len(MODELS)), MODELS, strict=True):
        link_model(folder, data_dir, model)
    with serve(data_dir, workers=1) as server:
        promised, polled = asyncio.run(burst(server, count))
        times = finish_times(data_dir, [job_id for job_id, _ in promised])

    def error(eta: int, since: datetime, job_id: int) -> float:
        actual = (times[job_id][1] - since).total_seconds()
        return abs(eta - actual) / max(actual, 1e-3)

    errors = [error(eta, sent, job_id) for job_id, eta, sent in polled]
    at_submit = [error(eta, times[job_id][0], job_id) for job_id, eta in promised]
    median_error = median(errors) if errors else None
    return result(
        "P10",
        f"ETA error over {count} mixed jobs ({len(MODELS)} models, sizes {SIZES}, steps {STEPS}), fetched once "
        "right after they were all submitted",
        f"the goal (ratio = median |eta − actual| / actual ÷ {LIMIT})",
        None if median_error is None else median_error / LIMIT,
        f"median relative error ≤ {LIMIT}",
        median_error is not None and median_error <= LIMIT,
        limit=1.0,
        median_error=median_error,
        worst_error=max(errors, default=None),
        median_error_at_submit=median(at_submit),
        fetched_eta_s=[eta for _, eta, _ in polled],
        fetched_actual_s=[round((times[job_id][1] - sent).total_seconds(), 2) for job_id, _, sent in polled],
    )
