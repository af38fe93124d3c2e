"""Shared parts of the #7 benchmarks: the run context, result dicts, timing statistics and a self-hosted server."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import gc
import io
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

TINY_MODEL = "bench-tiny"
SD15_MODEL = "bench-sd15"
# P2 on CPU: the SD 1.5 layout at half the UNet channel widths (see bench/models.py).
SD15_HALF_MODEL = "bench-sd15-half"
SEED = 1234


@dataclass
class Server:
    """A `sdserver serve` subprocess on a temporary data dir."""

    url: str
    key: str
    pid: int
    data_dir: Path
    ready_s: float


@dataclass
class RunContext:
    """What every benchmark of one `python -m bench` run shares: mode, device, scratch space, cached resources."""

    quick: bool
    device: str
    workdir: Path
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def gpu(self) -> bool:
        return self.device.startswith("cuda")

    closers: dict[str, Callable[[], None]] = field(default_factory=dict)

    def shared(self, name: str, make: Callable[[], Any], close: Callable[[], None] | None = None) -> Any:
        """One instance per run of an expensive resource (a built model folder, a started server); `close`, if
        given, runs when it is dropped or at the end of the run."""
        if name not in self.cache:
            self.cache[name] = make()
            if close is not None:
                self.closers[name] = close
        return self.cache[name]

    def drop(self, name: str) -> None:
        """Free a shared resource no later benchmark needs (an SD 1.5 pipeline holds 4 GB, its server as much)."""
        self.cache.pop(name, None)
        closer = self.closers.pop(name, None)
        if closer is not None:
            closer()
        gc.collect()

    def close(self) -> None:
        for name in list(self.closers):
            self.drop(name)
        self.stack.close()


def result(
    pid: str,
    measure: str,
    baseline: str,
    ratio: float | None,
    goal: str,
    met: bool | None,
    *,
    limit: float | None = None,
    better: str = "lower",
    **context: Any,
) -> dict[str, Any]:
    """The one shape every benchmark returns. `limit`/`better`: the goal as a bound on the ratio, for charts
    (None where the goal is not a ratio bound); `context` holds absolute figures and settings."""
    return {
        "id": pid,
        "measure": measure,
        "baseline": baseline,
        "ratio": None if ratio is None else round(float(ratio), 4),
        "goal": goal,
        "met": met,
        "limit": limit,
        "better": better,
        "context": {key: _rounded(value) for key, value in context.items()},
    }


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    return value


def quantile(values: list[float], share: float) -> float:
    """Nearest-rank quantile (no interpolation: p99 of 100 samples is the 99th value)."""
    if not values:
        raise ValueError("no samples to take a quantile of")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(np.ceil(share * len(ordered))) - 1))
    return ordered[index]


def median(values: list[float]) -> float:
    return float(np.median(values))


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }


def noise_png(side: int, seed: int = SEED) -> bytes:
    """Random RGB noise as PNG: incompressible, so `side` fixes the size (576 px: about 1 MB)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def smooth_png(side: int, seed: int = SEED) -> str:
    """A smooth seeded picture as base64 PNG: an img2img init image."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    pixels = np.stack([ramp[None, :].repeat(side, 0), ramp[:, None].repeat(side, 1), np.full((side, side), 128.0)], -1)
    pixels += rng.normal(0, 8, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def rss_mib(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def maps_torch(pid: int) -> bool:
    """Whether the process has libtorch mapped: `import torch` always maps it, so absence proves torch is not in
    its sys.modules, seen from outside without a debug route."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def new_data_dir(ctx: RunContext, name: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=ctx.workdir))
    (folder / "models").mkdir()
    return folder


def link_model(source: Path, data_dir: Path, model_id: str) -> None:
    """Make a built diffusers folder visible as `model_id` under a data dir (a symlink: SD 1.5 weights are 4 GB)."""
    target = data_dir / "models" / "diffusers" / model_id
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source, target_is_directory=True)


@contextlib.contextmanager
def serve(
    data_dir: Path, *, workers: int, sync_wait_s: float = 0.0, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """`sdserver serve` on `data_dir` (models already there); yields once /healthz answers 200."""
    port = free_port()
    key = "sd_bench_" + secrets.token_urlsafe(24)
    environ = (
        os.environ
        | {
            "SDSERVER_DATA_DIR": str(data_dir),
            "SDSERVER_PORT": str(port),
            "SDSERVER_ADMIN_KEY": key,
            "SDSERVER_FETCH_ALLOWLIST": "127.0.0.1",
            "SDSERVER_WORKERS": str(workers),
            "SDSERVER_SYNC_WAIT_S": str(sync_wait_s),
            "HF_HUB_OFFLINE": "1",
        }
        | (env or {})
    )
    command = [sys.executable, "-m", "sdserver.cli", "serve", "--log-level", "warning"]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=environ)  # noqa: S603 (our own executable, fixed arguments)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2, trust_env=False).status_code == 200:
                    break
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready in 120 s")
            time.sleep(0.02)
        yield Server(url, key, process.pid, data_dir, time.perf_counter() - started)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(data_dir / "objects", ignore_errors=True)


def check_success(reply: dict[str, Any], what: str) -> dict[str, Any]:
    if reply.get("status") != "success":
        raise RuntimeError(f"{what}: {reply.get('status')}: {reply.get('message') or reply}")
    return reply
