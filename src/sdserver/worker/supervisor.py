"""Local worker subprocesses for `serve`: start them with the server's settings, restart those that die, stop them."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from pydantic import SecretStr

from sdserver.config import Settings
from sdserver.logs import LogFormat
from sdserver.worker.loop import EXIT_RESTART

log = logging.getLogger(__name__)

ENV_PREFIX: Final = "SDSERVER_"
MONITOR_INTERVAL_S: Final = 0.2
RESTART_BACKOFF_S: Final = 0.5
MAX_RESTART_BACKOFF_S: Final = 10.0
# A worker that keeps dying (bad device, broken install) is not restarted more often than this.
MAX_RESTARTS_PER_MINUTE: Final = 5


def settings_to_env(settings: Settings) -> dict[str, str]:
    """SDSERVER_* variables from which `Settings()` rebuilds `settings` in a child process.

    Lists go as JSON, secrets revealed (the child needs them; the environment is private to our processes),
    paths made absolute (the child may start elsewhere). Unset optional fields are left out.
    """
    env: dict[str, str] = {}
    for name, info in type(settings).model_fields.items():
        value = getattr(settings, name)
        if value is None:
            if info.default is not None:
                raise ValueError(f"settings.{name} is None but defaults to {info.default!r}: cannot be passed on")
            continue
        env[ENV_PREFIX + name.upper()] = _env_value(value)
    return env


def _env_value(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        # Lists of paths (model_import_dirs) go as absolute path strings, like single paths.
        return json.dumps([str(item.resolve()) if isinstance(item, Path) else item for item in value])
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


@dataclass(eq=False)
class _Slot:
    """One worker position: the process filling it now and when it was last restarted."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    restart_at: float | None = None
    restarts: deque[float] = field(default_factory=deque)
    # Set while restart_all replaces this slot's process, so the monitor keeps its hands off.
    paused: bool = False


class WorkerSupervisor:
    """Keeps `count` worker subprocesses (`python -m sdserver.worker.main`) running until `stop`."""

    def __init__(
        self,
        settings: Settings,
        count: int,
        *,
        env: Mapping[str, str] | None = None,
        log_level: str = "info",
        log_format: LogFormat = "text",
        grace_s: float = 30.0,
    ) -> None:
        base = dict(os.environ if env is None else env)
        # Our settings replace every SDSERVER_* variable, so an unset optional field stays unset in the child.
        self._env = {k: v for k, v in base.items() if not k.startswith(ENV_PREFIX)} | settings_to_env(settings)
        self._argv = [
            sys.executable,
            "-m",
            "sdserver.worker.main",
            f"--log-level={log_level}",
            f"--log-format={log_format}",
            f"--grace-s={grace_s}",
            f"--parent-pid={os.getpid()}",
        ]
        self._slots = [_Slot(index) for index in range(count)]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            for slot in self._slots:
                slot.proc = self._spawn(slot)
        self._monitor = threading.Thread(target=self._monitor_loop, name="sdserver-supervisor", daemon=True)
        self._monitor.start()

    def pids(self) -> list[int]:
        """Pids of the workers running now (a slot waiting for its restart has none)."""
        with self._lock:
            return [slot.proc.pid for slot in self._slots if slot.proc is not None and slot.proc.poll() is None]

    def stop(self, timeout: float = 40.0) -> None:
        """SIGTERM every worker (they finish or release their job), SIGKILL those still alive after `timeout`."""
        self._stopping.set()
        if self._monitor is not None:
            self._monitor.join()
        with self._lock:
            procs = [slot.proc for slot in self._slots if slot.proc is not None]
            for slot in self._slots:
                slot.proc = None
        _terminate(procs, timeout)

    def restart_all(self, timeout: float = 40.0) -> None:
        """Rolling restart: one worker at a time is stopped gracefully and replaced, so the others keep serving."""
        for slot in self._slots:
            if self._stopping.is_set():
                return
            with self._lock:
                slot.paused = True
                old, slot.proc = slot.proc, None
            if old is not None:
                _terminate([old], timeout)
            with self._lock:
                if not self._stopping.is_set():
                    slot.proc = self._spawn(slot)
                    slot.restart_at = None
                slot.paused = False

    def _spawn(self, slot: _Slot) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self._argv, env=self._env)  # noqa: S603 - our own interpreter and module
        log.info("worker %d started (pid %d)", slot.index, proc.pid)
        return proc

    def _monitor_loop(self) -> None:
        while not self._stopping.wait(MONITOR_INTERVAL_S):
            with self._lock:
                if self._stopping.is_set():
                    return
                now = time.monotonic()
                for slot in self._slots:
                    if not slot.paused:
                        self._tend(slot, now)

    def _tend(self, slot: _Slot, now: float) -> None:
        """Notice a dead worker, then restart it after a backoff that grows with its recent restarts."""
        if slot.proc is not None:
            code = slot.proc.poll()
            if code is None:
                return
            if code == EXIT_RESTART:
                # Asked to restart (restart_server): not a crash, so no backoff and no count against the limit.
                log.info("worker %d (pid %d) restarting as requested", slot.index, slot.proc.pid)
                slot.proc = self._spawn(slot)
                return
            log.warning("worker %d (pid %d) exited with status %s; restarting", slot.index, slot.proc.pid, code)
            slot.proc = None
            while slot.restarts and now - slot.restarts[0] > 60.0:
                slot.restarts.popleft()
            delay = min(MAX_RESTART_BACKOFF_S, RESTART_BACKOFF_S * 2 ** len(slot.restarts))
            if len(slot.restarts) >= MAX_RESTARTS_PER_MINUTE:
                delay = max(delay, slot.restarts[0] + 60.0 - now)
                log.error(
                    "worker %d died %d times in a minute; next try in %.0f s", slot.index, len(slot.restarts), delay
                )
            slot.restart_at = now + delay
        if slot.restart_at is not None and now >= slot.restart_at:
            slot.restarts.append(now)
            slot.restart_at = None
            slot.proc = self._spawn(slot)


def _terminate(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker pid %d did not stop in %.0f s; killing it", proc.pid, timeout)
            proc.kill()
            proc.wait()
