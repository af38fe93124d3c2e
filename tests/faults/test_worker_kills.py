"""Ten SIGKILLs of worker processes, each at a different moment of a job's life: nothing lost, nothing orphaned."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from PIL import Image

from sdserver.objects.base import make_object_key
from sdserver.objects.local import LocalObjectStore
from tests.support.cluster import Cluster, cluster, cluster_env, submit_many, wait_all_success, wait_ready
from tests.support.live_server import free_port

__all__ = ["cluster"]  # pytest fixture, imported for the test below

T = TypeVar("T")

JOBS = 14
# test-slow sleeps 0.2 s a step (the API keeps no delay field): 1.2 s a job.
STEPS = 6
KILLS = 10
# Claims take the oldest queued job, so a killed job is usually the next one run and could take every kill:
# one attempt more than there are kills means no job can run out of attempts, whatever the timing.
MAX_ATTEMPTS = KILLS + 1
WAIT_S = 30.0

# Loaded by the killed worker only (PYTHONPATH): it stops the process for good at one exact point of an
# atomic object write, so the test can kill it there. The write itself runs unchanged up to that point.
PAUSE_HOOK = """
import os, time

_point, _marker, _replace = os.environ["FAULT_PAUSE_AT"], os.environ["FAULT_MARKER"], os.replace


def _paused_replace(src, dst, *args, **kwargs):
    if not str(src).endswith(".part"):
        return _replace(src, dst, *args, **kwargs)
    if _point == "after_rename":
        _replace(src, dst, *args, **kwargs)
    with open(_marker + ".tmp", "w") as marker:
        marker.write(str(src) + "\\n" + str(dst))
    _replace(_marker + ".tmp", _marker)
    while True:
        time.sleep(1)


os.replace = _paused_replace
"""


@dataclass
class Kill:
    moment: str
    job_id: int | None  # the job the worker held (running) when it died
    step: int | None


class Jobs:
    """Reads the cluster's SQLite job table directly: who runs what, how far, how often."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        self._conn.row_factory = sqlite3.Row

    def rows(self, where: str = "1 = 1", *args: Any) -> list[sqlite3.Row]:
        return self._conn.execute(f"SELECT * FROM jobs WHERE {where} ORDER BY id", args).fetchall()  # noqa: S608

    def running_on(self, pid: int) -> sqlite3.Row | None:
        found = self.rows("status = 'running' AND worker_id LIKE ?", f"%:{pid}:%")
        assert len(found) <= 1, found
        return found[0] if found else None

    def succeeded_on(self, pid: int) -> list[sqlite3.Row]:
        return self.rows("status = 'succeeded' AND worker_id LIKE ?", f"%:{pid}:%")

    def registered(self, pid: int) -> bool:
        query = "SELECT 1 FROM workers WHERE worker_id LIKE ?"
        return self._conn.execute(query, (f"%:{pid}:%",)).fetchone() is not None

    def close(self) -> None:
        self._conn.close()


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = WAIT_S) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found is not None and found is not False:
            return found
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def at_step(jobs: Jobs, pid: int, step: int) -> sqlite3.Row | None:
    row = jobs.running_on(pid)
    return row if row is not None and row["progress_step"] >= step else None


class Killer:
    """Starts victim workers, SIGKILLs them and records which job each held when it died."""

    def __init__(self, cluster: Cluster, env: dict[str, str], jobs: Jobs, hook_dir: Path) -> None:
        self.cluster, self.env, self.jobs, self.hook_dir = cluster, env, jobs, hook_dir
        self.kills: list[Kill] = []

    def start(self, **env: str) -> subprocess.Popen[bytes]:
        return self.cluster.start({**self.env, **env}, "worker")

    def start_paused_at(self, point: str) -> tuple[subprocess.Popen[bytes], Path]:
        marker = self.hook_dir / f"{point}.marker"
        path = os.pathsep.join(filter(None, [str(self.hook_dir), self.env.get("PYTHONPATH")]))
        return self.start(PYTHONPATH=path, FAULT_PAUSE_AT=point, FAULT_MARKER=str(marker)), marker

    def kill(self, worker: subprocess.Popen[bytes], moment: str) -> Kill:
        os.kill(worker.pid, signal.SIGKILL)
        assert worker.wait(timeout=10) == -signal.SIGKILL
        # A dead worker changes nothing and its lease has >= 2 s left, so this is what it held when it died.
        row = self.jobs.running_on(worker.pid)
        kill = Kill(moment, row["id"] if row else None, row["progress_step"] if row else None)
        self.kills.append(kill)
        return kill


def test_ten_worker_kills_at_different_moments_lose_nothing(tmp_path: Path, cluster: Cluster) -> None:
    data_dir = tmp_path / "data"
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(PAUSE_HOOK)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = cluster_env(data_dir, port, job_max_attempts=MAX_ATTEMPTS)
    cluster.start(env, "serve", "--workers", "0")
    wait_ready(base_url)
    jobs = Jobs(data_dir / "sdserver.db")
    killer = Killer(cluster, env, jobs, hook_dir)
    started = time.monotonic()

    # 1. Idle, before there is any work.
    worker = killer.start()
    wait_for("the worker to register", lambda: jobs.registered(worker.pid))
    assert killer.kill(worker, "idle, empty queue").job_id is None

    replies = submit_many(base_url, JOBS, num_inference_steps=STEPS)
    promised = {reply["id"]: reply["future_links"] for reply in replies}

    # 2. Claimed, before the first step.
    worker = killer.start()
    wait_for("a claim", lambda: jobs.running_on(worker.pid))
    killer.kill(worker, "right after claim")

    # 3-5. A third in, two thirds in, at the last step (then the outputs are written and the job completed).
    for step in (2, 4, STEPS):
        worker = killer.start()
        wait_for(f"step {step}", lambda worker=worker, step=step: at_step(jobs, worker.pid, step))
        killer.kill(worker, f"once step >= {step}/{STEPS} was reported")

    # 6. Output fully written to its temp file, not yet renamed to its key.
    worker, marker = killer.start_paused_at("before_rename")
    wait_for("the temp file write", marker.exists)
    temp_file, final = map(Path, marker.read_text().splitlines())
    assert temp_file.is_file() and not final.exists()
    assert killer.kill(worker, "output in temp file, before rename").job_id is not None

    # 7. Output in place under its key, job not yet completed.
    worker, marker = killer.start_paused_at("after_rename")
    wait_for("the output rename", marker.exists)
    assert Path(marker.read_text().splitlines()[1]).is_file()
    assert killer.kill(worker, "output renamed, before complete").job_id is not None

    # 8. Between jobs: one job just completed, the next one maybe claimed.
    worker = killer.start()
    wait_for("a completed job", lambda: jobs.succeeded_on(worker.pid))
    killer.kill(worker, "right after completing a job")

    # 9-10. Two workers mid-job, killed back to back.
    pair = [killer.start(), killer.start()]
    for one in pair:
        wait_for("both workers mid-job", lambda one=one: at_step(jobs, one.pid, 1))
    for one in pair:
        killer.kill(one, "two workers mid-job, back to back")
    assert len(killer.kills) == KILLS
    kills_done = time.monotonic()

    killer.start()
    finished = wait_all_success(base_url, list(promised), timeout=90)

    hits = Counter(kill.job_id for kill in killer.kills if kill.job_id is not None)
    rows = {row["id"]: row for row in jobs.rows()}
    jobs.close()
    assert sorted(rows) == sorted(promised)
    expected_files: set[str] = set()
    for job_id, links in promised.items():
        row = rows[job_id]
        # Each kill that caught the job running cost it exactly one attempt; then it succeeded, once.
        assert (row["status"], row["attempts"]) == ("succeeded", 1 + hits[job_id]), dict(row)
        assert finished[job_id]["output"] == links
        keys = json.loads(row["output_keys"])
        assert [f"{base_url}/files/{key}" for key in keys] == links
        expected_files.update(keys)
        for link in links:
            png = httpx.get(link, timeout=10).content
            assert png.startswith(b"\x89PNG")
            assert Image.open(io.BytesIO(png)).size == (64, 64)
    objects_dir = data_dir / "objects"
    # Exactly the promised outputs: no orphan object, no temp file left by a write a kill cut short.
    on_disk = {path.relative_to(objects_dir).as_posix() for path in objects_dir.rglob("*") if path.is_file()}
    assert on_disk == expected_files

    attempts = sorted(Counter(row["attempts"] for row in rows.values()).items())
    print(
        f"\n{KILLS} kills in {kills_done - started:.1f} s, all done {time.monotonic() - started:.1f} s; "
        f"{JOBS} jobs, {sum(hits.values())} runs cut short, (attempts, jobs): {attempts}"
    )
    for kill in killer.kills:
        print(f"  {kill.moment}: job {kill.job_id} step {kill.step}")


def local_store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects", "http://127.0.0.1:1", b"secret", 3600)


def test_a_killed_writers_temp_file_goes_when_the_key_is_written_again(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    key = make_object_key("outputs", "png", temp=False)
    path = store.path_for(key)
    path.parent.mkdir(parents=True)
    # What a writer SIGKILLed before its rename leaves: a whole temp file, never renamed.
    leftover = path.parent / f".{path.name}.k1ll3d.part"
    leftover.write_bytes(b"\x89PNG half")
    unrelated = path.parent / ".0123456789abcdef0123456789abcdef.png.other.part"
    unrelated.write_bytes(b"another key's write in progress")

    store.put(key, b"\x89PNG whole", "image/png")

    assert store.get(key) == b"\x89PNG whole"
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, unrelated.name])


def test_a_writer_whose_temp_file_another_writer_of_the_key_removed_still_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose lease ran out and the job's new owner write the same key at once: both end well."""
    store = local_store(tmp_path)
    key = make_object_key("outputs", "png", temp=False)
    real_replace = os.replace

    def other_writer_first(src: str, dst: str) -> None:
        monkeypatch.setattr(os, "replace", real_replace)
        store.put(key, b"\x89PNG same", "image/png")  # renames its own file and removes ours as a leftover
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", other_writer_first)
    store.put(key, b"\x89PNG same", "image/png")

    assert store.get(key) == b"\x89PNG same"
    assert [p.name for p in store.path_for(key).parent.iterdir()] == [store.path_for(key).name]
