"""P7: model loads per 100 mixed jobs over 2 models and 2 workers, claim affinity on vs off (oldest job first).

The jobs go in through the HTTP API; the two workers are separate processes running the real worker loop and
diffusion engine (`python -m bench.p7_affinity --worker ...`), wrapped so that loads are counted and, for the
baseline, affinity is off without a setting: that run hands the store's `claim` no held models, which is exactly
the plain oldest-first claim (peers' models ignored too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import SEED, RunContext, Server, check_success, link_model, new_data_dir, result, serve
from bench.models import tiny_folders

MODELS = ("p7-a", "p7-b")
WORKERS = 2
LIMIT = 4
# Affinity must not cost wall time: its run may take at most this much longer than the baseline's.
WALL_LIMIT = 1.05
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
        # No held models and no peers seen (the store would otherwise spread idle workers over models).
        return self._inner.claim(worker_id, **(options | {"held_models": (), "peers_seen_within_s": 0.0}))


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


def worker_main(data_dir: Path, worker_id: str, affinity: bool, report: Path) -> None:
    """One worker process: the real loop and diffusion engine until SIGTERM; then its load count to `report`."""
    from sdserver.config import Settings
    from sdserver.database import create_db_engine
    from sdserver.engines.diffusion.engine import DiffusionEngine
    from sdserver.jobstore.store import JobStore
    from sdserver.worker.loop import Worker
    from sdserver.worker.main import build_object_store

    settings = Settings(data_dir=data_dir)
    db = create_db_engine(settings.sql_url)
    store = JobStore(db)
    objects = build_object_store(settings, db)
    engine = CountingEngine(DiffusionEngine(settings, objects))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    claims: Any = store if affinity else NoAffinityStore(store)
    Worker(settings, claims, objects, [engine], worker_id, idle_wait_s=0.2).run(stop)
    report.write_text(json.dumps({"loads": engine.loads, "jobs": engine.jobs}))


def drain(data_dir: Path, ids: list[int], affinity: bool) -> dict[str, Any]:
    """Run two worker processes until every job in `ids` has ended; their loads and the wall time."""
    from sdserver.database import create_db_engine
    from sdserver.jobstore.store import JobStore

    reports = [data_dir / f"p7-worker-{index}.json" for index in range(WORKERS)]
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    processes = [
        subprocess.Popen(  # noqa: S603 (this module, fixed arguments)
            [
                *(sys.executable, "-m", "bench.p7_affinity", "--worker", str(data_dir), f"bench-p7-{index}"),
                *("--affinity" if affinity else "--no-affinity", "--report", str(report)),
            ],
            env=env,
        )
        for index, report in enumerate(reports)
    ]
    db = create_db_engine(f"sqlite:///{(data_dir / 'sdserver.db').resolve()}")
    store = JobStore(db)
    try:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while not all(store.get(job_id, owner_key_id=None).status.is_terminal for job_id in ids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"P7 jobs still running after {JOB_TIMEOUT_S:.0f} s")
            if any(process.poll() is not None for process in processes):
                raise RuntimeError("a P7 worker exited early")
            time.sleep(0.25)
        spawn_to_done = time.perf_counter() - started
        ended = [store.get(job_id, owner_key_id=None) for job_id in ids]
        failed = sum(1 for job in ended if job.status.value != "succeeded")
        # Wall time of the work itself: first job started to last job finished. Process start-up (importing
        # torch and diffusers, slower for whichever side runs first on a cold page cache) is not the claim
        # policy's doing, so it stays out of the comparison.
        starts = [job.started_at for job in ended if job.started_at is not None]
        ends = [job.finished_at for job in ended if job.finished_at is not None]
        wall = (max(ends) - min(starts)).total_seconds() if starts and ends else spawn_to_done
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        store.close()
        db.dispose()
    counts = [json.loads(report.read_text()) for report in reports]
    for report in reports:
        report.unlink()
    return {
        "loads": sum(count["loads"] for count in counts),
        "jobs_per_worker": [count["jobs"] for count in counts],
        "wall_s": wall,
        "spawn_to_done_s": spawn_to_done,
        "failed": failed,
    }


def run(ctx: RunContext) -> dict[str, Any]:
    count = 8 if ctx.quick else 100
    data_dir = new_data_dir(ctx, "p7")
    for folder, model in zip(tiny_folders(ctx, len(MODELS)), MODELS, strict=True):
        link_model(folder, data_dir, model)
    picks = np.random.default_rng(SEED).integers(0, len(MODELS), count)
    mix = [MODELS[pick] for pick in picks]
    outcome: dict[str, dict[str, Any]] = {}
    with serve(data_dir, workers=0) as server:
        for label, affinity in (("affinity", True), ("round_robin", False)):
            ids = asyncio.run(enqueue(server, mix))
            outcome[label] = drain(data_dir, ids, affinity)
    loads, baseline = outcome["affinity"]["loads"], outcome["round_robin"]["loads"]
    failed = outcome["affinity"]["failed"] + outcome["round_robin"]["failed"]
    wall_ratio = outcome["affinity"]["wall_s"] / max(outcome["round_robin"]["wall_s"], 1e-9)
    return result(
        "P7",
        f"model loads per {count} mixed jobs over {len(MODELS)} models and {WORKERS} workers, affinity on",
        "the same jobs with affinity off (each claim takes the oldest job)",
        loads / baseline if baseline else None,
        f"≤ {LIMIT} loads, wall ≤ {WALL_LIMIT}× the baseline's",
        loads <= LIMIT and wall_ratio <= WALL_LIMIT and failed == 0,
        loads_affinity=loads,
        loads_round_robin=baseline,
        wall_affinity_s=outcome["affinity"]["wall_s"],
        wall_round_robin_s=outcome["round_robin"]["wall_s"],
        wall_ratio=wall_ratio,
        jobs_per_worker_affinity=outcome["affinity"]["jobs_per_worker"],
        jobs_per_worker_round_robin=outcome["round_robin"]["jobs_per_worker"],
        failed_jobs=failed,
        jobs=count,
        mix={model: mix.count(model) for model in MODELS},
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one P7 worker process (started by the benchmark)")
    parser.add_argument("--worker", nargs=2, metavar=("DATA_DIR", "WORKER_ID"), required=True)
    parser.add_argument("--affinity", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--report", type=Path, required=True)
    arguments = parser.parse_args()
    worker_main(Path(arguments.worker[0]), arguments.worker[1], arguments.affinity, arguments.report)
