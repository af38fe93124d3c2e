"""The engines' caches of loaded weights: least recently used first out, each entry stamped with the fingerprint
of the files it came from so that weights replaced on disk are loaded again."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection, Hashable
from pathlib import Path
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class FingerprintLRU(Generic[K, V]):
    """At most `max_entries` values by key. Each call is atomic (the worker's control thread reads `keys()` while
    a job loads); evicted values are handed back so the caller can release what they hold (device memory,
    adapters on a shared model) once the cache no longer refers to them."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[K, tuple[object, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, fingerprint: object) -> V | None:
        """The value loaded from files with this fingerprint, now the most recently used; None when it is not
        loaded or its files changed since (a stale entry stays until `pop` or `put` replaces it)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != fingerprint:
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: K, fingerprint: object, value: V) -> list[tuple[K, V]]:
        """Store `value` as the most recently used, replacing any entry for `key`; returns the entries evicted,
        oldest first, to stay within `max_entries`."""
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = (fingerprint, value)
            evicted: list[tuple[K, V]] = []
            while len(self._entries) > self.max_entries:
                old_key, (_, old_value) = self._entries.popitem(last=False)
                evicted.append((old_key, old_value))
            return evicted

    def make_room(self, keep: Collection[K] = ()) -> list[tuple[K, V]]:
        """Evict the least recently used entries not in `keep` until one `put` fits without evicting; returns
        them, oldest first. Stops early when only kept entries are left."""
        with self._lock:
            evicted: list[tuple[K, V]] = []
            while len(self._entries) >= self.max_entries:
                oldest = next((key for key in self._entries if key not in keep), None)
                if oldest is None:
                    break
                evicted.append((oldest, self._entries.pop(oldest)[1]))
            return evicted

    def pop_oldest(self) -> tuple[K, V] | None:
        """Remove and return the least recently used entry (None when empty)."""
        with self._lock:
            if not self._entries:
                return None
            key, (_, value) = self._entries.popitem(last=False)
            return key, value

    def pop(self, key: K) -> V | None:
        with self._lock:
            entry = self._entries.pop(key, None)
        return None if entry is None else entry[1]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def keys(self) -> frozenset[K]:
        with self._lock:
            return frozenset(self._entries)

    def values(self) -> list[V]:
        """The values, least recently used first."""
        with self._lock:
            return [value for _, value in self._entries.values()]

    def is_full(self) -> bool:
        with self._lock:
            return len(self._entries) >= self.max_entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def files_fingerprint(path: Path) -> int:
    """Newest modification time of the file, or of any file in the folder: a folder's own mtime misses files
    overwritten in place. 0 when the files cannot be read (they are being replaced; the next look reloads)."""
    try:
        files = [path] if path.is_file() else [entry for entry in path.rglob("*") if entry.is_file()]
        return max((entry.stat().st_mtime_ns for entry in files), default=0)
    except OSError:
        return 0
