"""A worker's side of the control channel: between jobs, act on clear_cache, restart_workers and storage commands."""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from sdserver.errors import StorageError
from sdserver.jobstore.control import Command, CommandWatcher

if TYPE_CHECKING:
    from sdserver.engines.base import Engine

log = logging.getLogger(__name__)


class WorkerControl:
    """Polls the command table (cheaply: at most every `poll_s`) and applies what it finds.

    Runs on the loop thread between jobs, never during one: engines need not be thread-safe, and a restart
    lets the current job finish first.
    """

    def __init__(
        self,
        watcher: CommandWatcher,
        engines: Sequence[Engine],
        *,
        reload_storage: Callable[[], bool] | None = None,
    ) -> None:
        self._watcher = watcher
        self._engines = list(engines)
        self._reload_storage = reload_storage

    def between_jobs(self, *, force: bool = False) -> bool:
        """Apply new commands; True when the worker must exit so its supervisor starts a fresh one."""
        commands = self._watcher.poll(force=force)
        if Command.STORAGE in commands and self._reload_storage is not None:
            self._switch_storage(self._reload_storage)
        if Command.CLEAR_CACHE in commands:
            self.clear_cache()
        if Command.RESTART_WORKERS in commands:
            log.info("restart requested: exiting after the current job")
            return True
        return False

    def sync_storage(self) -> None:
        """Catch up with a storage switch now, without waiting for the next poll."""
        if self._reload_storage is not None:
            self._switch_storage(self._reload_storage)

    def _switch_storage(self, reload: Callable[[], bool]) -> None:
        try:
            if reload():
                log.info("object store switched to the persisted storage settings")
        except StorageError as exc:
            # The API probed these settings before saving them; keep writing to the old store rather than die.
            log.error("could not switch to the persisted storage settings; keeping the current store: %s", exc)

    def clear_cache(self) -> None:
        for engine in self._engines:
            engine.clear()
        free_memory()
        log.info("cache cleared: loaded models dropped")


def free_memory() -> None:
    """Collect garbage and hand cached device memory back; torch is used only if the engines already loaded it."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
