"""P7: model loads per 100 mixed jobs over 2 models and 2 workers, claim affinity on vs off (oldest job first).

The jobs go in through the HTTP API; the two workers are the real worker loop and diffusion engine, run as threads
in this process so that loads can be counted and affinity turned off without a setting: the affinity-off run
hands the store's `claim` no held models, which is exactly the plain oldest-first claim.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.common import SEED, RunContext, Server, check_success, link_model, new_data_dir, result, serve
from bench.models import tiny_folders

MODELS = ("p7-a", "p7-b")
WORKERS = 2
LIMIT = 4
JOB_TIMEOUT_S = 600.0


class CountingEngine:
    """Wraps an engine; a run whose model the engine did not hold before counts as one model load."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.loads = 0
        self.jobs = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def run(self, jobs: Sequence[Any], ctx: Callable[[Any], Any]) -> Any:
        if jobs and jobs[0].model_id not in set(self._inner.held_models()):
            self.loads += 1
        self.jobs += len(jobs)
        return self._inner.run(jobs, ctx)


class NoAffinityStore:
    """The job store, except that claims ignore the models the worker holds: oldest queued job first."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def claim(self, worker_id: str, **options: Any) -> Any:
        return self._inner.claim(worker_id, **(options | {"held_models": ()}))


async def enqueue(server: Server, models: list[str]) -> list[int]:
    ids = []
    async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
        for index, model in enumerate(models):
            body = {"key": server.key, "model_id": model, "prompt": "a red house", "width": 64, "height": 64}
            body |= {"num_inference_steps": 2, "samples": 1, "seed": SEED + index}
            reply = (await client.post(f"{server.url}/api/v1/enterprise/text2img", json=body)).json()
            if reply.get("status") != "processing":
                check_success(reply, "text2img")
            ids.append(int(reply["id"]))
    return ids


def drain(data_dir: Path, ids: list[int], affinity: bool) -> dict[str, Any]:
    """Run two in-process workers until every job in `ids` has ended; loads and wall time."""
    from sdserver.config import Settings
    from sdserver.database import create_db_engine
    from sdserver.engines.diffusion.engine import DiffusionEngine
    from sdserver.store import JobStore
    from sdserver.worker.loop import Worker
    from sdserver.worker.main import build_object_store

    settings = Settings(data_dir=data_dir)
    db = create_db_engine(settings.sql_url)
    store = JobStore(db)
    objects = build_object_store(settings, db)
    engines = [CountingEngine(DiffusionEngine(settings, objects)) for _ in range(WORKERS)]
    stop = threading.Event()
    claims: Any = store if affinity else NoAffinityStore(store)
    workers = [
        Worker(settings, claims, objects, [engine], f"bench-p7-{index}", idle_wait_s=0.2)
        for index, engine in enumerate(engines)
    ]
    threads = [threading.Thread(target=worker.run, args=(stop,), daemon=True) for worker in workers]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            states = [store.get(job_id, owner_key_id=None).status for job_id in ids]
            if all(state.is_terminal for state in states):
                break
            time.sleep(0.25)
        else:
            raise RuntimeError(f"P7 jobs still running after {JOB_TIMEOUT_S:.0f} s")
        wall = time.perf_counter() - started
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    failed = sum(1 for job_id in ids if store.get(job_id, owner_key_id=None).status.value != "succeeded")
    store.close()
    db.dispose()
    return {
        "loads": sum(engine.loads for engine in engines),
        "jobs_per_worker": [engine.jobs for engine in engines],
        "wall_s": wall,
        "failed": failed,
    }


def run(ctx: RunContext) -> dict[str, Any]:
    count = 20 if ctx.quick else 100
    data_dir = new_data_dir(ctx, "p7")
    for folder, model in zip(tiny_folders(ctx, len(MODELS)), MODELS, strict=True):
        link_model(folder, data_dir, model)
    picks = random.Random(SEED)
    mix = [picks.choice(MODELS) for _ in range(count)]
    outcome: dict[str, dict[str, Any]] = {}
    with serve(data_dir, workers=0) as server:
        for label, affinity in (("affinity", True), ("round_robin", False)):
            ids = asyncio.run(enqueue(server, mix))
            outcome[label] = drain(data_dir, ids, affinity)
    loads, baseline = outcome["affinity"]["loads"], outcome["round_robin"]["loads"]
    failed = outcome["affinity"]["failed"] + outcome["round_robin"]["failed"]
    return result(
        "P7",
        f"model loads per {count} mixed jobs over {len(MODELS)} models and {WORKERS} workers, affinity on",
        "the same jobs with affinity off (each claim takes the oldest job)",
        loads / baseline if baseline else None,
        f"≤ {LIMIT} loads",
        loads <= LIMIT and failed == 0,
        loads_affinity=loads,
        loads_round_robin=baseline,
        wall_affinity_s=outcome["affinity"]["wall_s"],
        wall_round_robin_s=outcome["round_robin"]["wall_s"],
        jobs_per_worker_affinity=outcome["affinity"]["jobs_per_worker"],
        jobs_per_worker_round_robin=outcome["round_robin"]["jobs_per_worker"],
        failed_jobs=failed,
        jobs=count,
        mix={model: mix.count(model) for model in MODELS},
    )
