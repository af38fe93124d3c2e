"""Detection results for files on disk, kept until the files change (keyed by path, mtime and size), so the API
reads a model's headers once, not on every request."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sdserver.catalog.families.kinds import FamilyInfo
from sdserver.errors import UnsupportedModelError

# Far more models than any server holds; past it the oldest results are dropped (they are cheap to redo).
_MAX_ENTRIES: Final = 4096


@dataclass(frozen=True)
class Detected:
    """A detection's outcome: the family (None: the files do not tell), or why the files are not supported."""

    info: FamilyInfo | None
    unsupported: str | None = None

    def require(self) -> FamilyInfo | None:
        """The family, or UnsupportedModelError with the detection's message."""
        if self.unsupported is not None:
            raise UnsupportedModelError(self.unsupported)
        return self.info


class DetectionCache:
    """Thread-safe (the API runs handlers on many threads); a result stays while its marker file is unchanged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: dict[tuple[str, str], tuple[tuple[int, int], Detected]] = {}

    def get(self, what: str, marker: Path, detect: Callable[[], FamilyInfo | None]) -> Detected:
        """`detect()`'s outcome for `what` (e.g. a kind and a path); redone when `marker` changed or vanished."""
        stamp = _stamp(marker)
        key = (what, str(marker))
        with self._lock:
            cached = self._results.get(key)
        if cached is not None and cached[0] == stamp and stamp != (0, 0):
            return cached[1]
        try:
            result = Detected(detect())
        except UnsupportedModelError as exc:
            result = Detected(None, exc.message)
        with self._lock:
            if len(self._results) >= _MAX_ENTRIES:
                self._results.clear()
            self._results[key] = (stamp, result)
        return result


def _stamp(path: Path) -> tuple[int, int]:
    try:
        status = path.stat()
    except OSError:
        return (0, 0)
    return (status.st_mtime_ns, status.st_size)
