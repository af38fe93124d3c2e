"""Soak: a mixed load (uploads, tiny-model generations, upscales, fetch polling, webhooks) for a given time against
a running server, then errors, p50/p99 latencies and the RSS growth of the API and worker processes.

    python -m bench.soak                      # starts its own server (tiny model, random upscaler), 10 minutes
    python -m bench.soak --duration 60        # a short run
    python -m bench.soak --url http://host:8000 --key ADMIN_KEY --model my-model [--pid API_PID]

Without --url it runs `sdserver serve` in a temporary data dir: a tiny random-weight SD model (its images are
noise; the load on the queue, store and HTTP paths is what is measured) and seeded random Real-ESRGAN weights.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import io
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

RESULTS = Path(__file__).parent / "results" / "soak.json"
TINY_MODEL = "soak-tiny"
UPSCALER = "realesr-general-x4v3"
# Share of the run before the RSS baseline is taken: caches, allocator pools and first model loads settle first.
WARMUP_SHARE = 0.2
RSS_INTERVAL_S = 2.0
POLL_INTERVAL_S = 0.25
JOB_TIMEOUT_S = 300.0
# The operation mix, by weight: what a typical app does (many uploads and polls, fewer generations).
MIX = (("upload", 4), ("text2img", 3), ("img2img", 2), ("upscale", 2))


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    fetches: list[float] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)


class WebhookReceiver:
    """Counts deliveries on 127.0.0.1; answers 200 at once so it never slows the server."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                with contextlib.suppress(ValueError):
                    receiver.received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def png_b64(side: int, seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class Load:
    def __init__(self, url: str, key: str, model: str, webhook: str | None, tally: Tally) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.model = model
        self.webhook = webhook
        self.tally = tally
        self.images = [png_b64(256, seed) for seed in range(4)]
        self.small = [png_b64(64, seed) for seed in range(4)]

    async def run_one(self, client: httpx.AsyncClient, op: str, index: int) -> None:
        started = time.perf_counter()
        try:
            if op == "upload":
                await self._upload(client, index)
            else:
                await self._job(client, op, index)
        except Exception as exc:  # every failure is counted, none stops the soak
            self.tally.errors[op].append(f"{type(exc).__name__}: {exc}"[:300])
            return
        self.tally.latencies[op].append(time.perf_counter() - started)

    async def _upload(self, client: httpx.AsyncClient, index: int) -> None:
        body = {"key": self.key, "base64_image": self.images[index % len(self.images)], "image_type": "png"}
        reply = (await client.post(f"{self.url}/api/v1/enterprise/upload_image", json=body)).json()
        if reply.get("status") != "success":
            raise RuntimeError(f"upload: {reply}")
        download = await client.get(reply["image_url"])
        if download.status_code != 200:
            raise RuntimeError(f"upload link answered {download.status_code}")
        self.tally.uploaded.append(reply["image_url"])

    async def _job(self, client: httpx.AsyncClient, op: str, index: int) -> None:
        body: dict[str, Any] = {"key": self.key, "track_id": f"{op}-{index}"}
        if self.webhook:
            body["webhook"] = self.webhook
        if op == "upscale":
            path = "/api/v1/enterprise/super_resolution"
            body |= {"url": self.small[index % len(self.small)], "model_id": UPSCALER, "scale": 2}
        else:
            path = f"/api/v1/enterprise/{op}"
            body |= {"prompt": "a red house", "model_id": self.model, "width": 64, "height": 64, "steps": 2}
            if op == "img2img":
                body["init_image"] = self.tally.uploaded[-1] if self.tally.uploaded else self.small[0]
        reply = (await client.post(f"{self.url}{path}", json=body)).json()
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while reply.get("status") == "processing":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{op} job {reply.get('id')} still processing after {JOB_TIMEOUT_S:.0f} s")
            await asyncio.sleep(POLL_INTERVAL_S)
            polled = time.perf_counter()
            fetch = f"{self.url}/api/v1/enterprise/fetch/{reply['id']}"
            reply = (await client.post(fetch, json={"key": self.key})).json()
            self.tally.fetches.append(time.perf_counter() - polled)
        if reply.get("status") != "success":
            raise RuntimeError(f"{op}: {reply.get('status')}: {reply.get('message')}")
        output = reply["output"]
        link = output if isinstance(output, str) else output[0]
        download = await client.get(link)
        if download.status_code != 200 or not download.content.startswith(b"\x89PNG"):
            raise RuntimeError(f"{op} output answered {download.status_code}")


async def drive(load: Load, duration_s: float, concurrency: int) -> None:
    ops = [name for name, weight in MIX for _ in range(weight)]
    stop_at = time.monotonic() + duration_s
    counter = iter(range(10**9))

    async def client_loop(offset: int) -> None:
        async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
            while time.monotonic() < stop_at:
                index = next(counter)
                await load.run_one(client, ops[(index + offset) % len(ops)], index)

    await asyncio.gather(*(client_loop(offset) for offset in range(concurrency)))


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                # Field 4 of /proc/<pid>/stat, after the parenthesised command name.
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


class RssSampler:
    """Samples the RSS of the API process and of its worker children (workers restarted by the supervisor show
    up as new pids; the sum over the current children is what is reported)."""

    def __init__(self, api_pid: int | None) -> None:
        self.api_pid = api_pid
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(RSS_INTERVAL_S):
            if self.api_pid is None:
                continue
            api = rss_bytes(self.api_pid) or 0
            workers = sum(rss_bytes(child) or 0 for child in children_of(self.api_pid))
            self.samples.append((time.monotonic() - started, api, workers))

    def growth(self, warmup_s: float) -> dict[str, Any]:
        after = [sample for sample in self.samples if sample[0] >= warmup_s]
        if len(after) < 2:
            return {"api": None, "workers": None}

        def pct(column: int) -> float | None:
            base = statistics.median(sample[column] for sample in after[: max(1, len(after) // 10)])
            end = statistics.median(sample[column] for sample in after[-max(1, len(after) // 10) :])
            return round(100.0 * (end - base) / base, 2) if base else None

        return {
            "api": pct(1),
            "workers": pct(2),
            "api_mb_after_warmup": round(after[0][1] / 2**20, 1),
            "api_mb_end": round(after[-1][1] / 2**20, 1),
            "workers_mb_after_warmup": round(after[0][2] / 2**20, 1),
            "workers_mb_end": round(after[-1][2] / 2**20, 1),
        }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def own_server(workers: int) -> Iterator[tuple[str, str, int]]:
    """`sdserver serve` on a temporary data dir with a tiny model and random upscaler weights."""
    from sdserver.engines.diffusion.tiny import make_tiny_model
    from sdserver.engines.upscale.tiny import write_official_weights

    data_dir = Path(tempfile.mkdtemp(prefix="sdserver-soak-"))
    models = data_dir / "models"
    make_tiny_model(models, TINY_MODEL)
    (models / "upscalers").mkdir(parents=True, exist_ok=True)
    write_official_weights(models / "upscalers", UPSCALER, "params")
    port = free_port()
    key = "sd_soak_" + secrets.token_urlsafe(24)
    env = os.environ | {
        "SDSERVER_DATA_DIR": str(data_dir),
        "SDSERVER_PORT": str(port),
        "SDSERVER_ADMIN_KEY": key,
        "SDSERVER_FETCH_ALLOWLIST": "127.0.0.1",
        "SDSERVER_WORKERS": str(workers),
        "SDSERVER_SYNC_WAIT_S": "2",
        "HF_HUB_OFFLINE": "1",
    }
    command = [sys.executable, "-m", "sdserver.cli", "serve", "--log-level", "warning"]
    process = subprocess.Popen(command, env=env)  # noqa: S603 (our own executable, fixed arguments)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2, trust_env=False).status_code == 200:
                    break
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}")
            time.sleep(0.2)
        else:
            raise RuntimeError("the server did not become ready in 60 s")
        yield url, key, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(data_dir, ignore_errors=True)


def summarise(tally: Tally, sampler: RssSampler, duration_s: float, webhooks: WebhookReceiver | None) -> dict[str, Any]:
    def quantiles(values: list[float]) -> dict[str, Any]:
        if not values:
            return {"count": 0}
        ordered = sorted(values)
        return {
            "count": len(ordered),
            "p50_ms": round(1000 * ordered[len(ordered) // 2], 1),
            "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
        }

    ops = {op: quantiles(tally.latencies[op]) | {"errors": len(tally.errors[op])} for op, _ in MIX}
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
        "duration_s": duration_s,
        "operations": ops,
        "fetch": quantiles(tally.fetches),
        "errors": sum(len(errors) for errors in tally.errors.values()),
        "error_samples": {op: errors[:5] for op, errors in tally.errors.items() if errors},
        "webhooks_received": len(webhooks.received) if webhooks else None,
        "rss_growth_pct": sampler.growth(duration_s * WARMUP_SHARE),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes of the self-hosted server")
    parser.add_argument("--url", help="a running server instead of a self-hosted one")
    parser.add_argument("--key", help="API key for --url")
    parser.add_argument("--model", default=TINY_MODEL, help="model id to generate with (--url)")
    parser.add_argument("--pid", type=int, help="API process id of --url, for RSS figures")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    webhooks = WebhookReceiver()
    tally = Tally()
    with contextlib.ExitStack() as stack:
        if args.url:
            if not args.key:
                parser.error("--url needs --key")
            url, key, pid = args.url, args.key, args.pid
        else:
            url, key, pid = stack.enter_context(own_server(args.workers))
        sampler = RssSampler(pid)
        sampler.start()
        load = Load(url, key, args.model, webhooks.url, tally)
        asyncio.run(drive(load, args.duration, args.concurrency))
        # Terminal webhooks go out from the API; give the last ones a moment.
        time.sleep(3)
        sampler.stop()
    webhooks.close()
    report = summarise(tally, sampler, args.duration, webhooks)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
