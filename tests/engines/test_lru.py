"""The fingerprinted LRU behind every engine cache: recency, fingerprints, eviction with kept keys, clear."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from sdserver.engines.lru import FingerprintLRU, files_fingerprint


def filled(*keys: str, max_entries: int = 3) -> FingerprintLRU[str, str]:
    cache: FingerprintLRU[str, str] = FingerprintLRU(max_entries)
    for key in keys:
        cache.put(key, 1, key.upper())
    return cache


def test_a_hit_needs_the_same_fingerprint() -> None:
    cache = filled("a")
    assert cache.get("a", 1) == "A"
    assert cache.get("a", 2) is None, "files replaced since the load: the caller must load again"
    assert cache.get("b", 1) is None
    assert cache.keys() == frozenset({"a"}), "a stale entry stays until the caller replaces or pops it"


def test_put_evicts_the_least_recently_used_beyond_the_limit() -> None:
    cache = filled("a", "b", "c")
    cache.get("a", 1)  # a is now the most recent; b is the oldest
    assert cache.put("d", 1, "D") == [("b", "B")]
    assert cache.values() == ["C", "A", "D"]


def test_put_replaces_a_stale_entry_in_place_of_evicting() -> None:
    cache = filled("a", "b", "c")
    assert cache.put("a", 2, "A2") == []
    assert cache.get("a", 2) == "A2" and cache.values() == ["B", "C", "A2"]


def test_make_room_frees_one_slot_and_spares_kept_keys() -> None:
    cache = filled("a", "b", "c")
    assert cache.make_room(keep={"a"}) == [("b", "B")]
    assert cache.make_room() == [], "a slot is free already"
    cache.put("d", 1, "D")
    assert cache.make_room(keep={"a", "c", "d"}) == [], "only kept entries left: nothing to give"
    assert len(cache) == 3


def test_pop_oldest_pop_and_clear() -> None:
    cache = filled("a", "b")
    assert cache.is_full() is False
    cache.put("c", 1, "C")
    assert cache.is_full() is True
    assert cache.pop_oldest() == ("a", "A")
    assert cache.pop("c") == "C" and cache.pop("c") is None
    cache.clear()
    assert len(cache) == 0 and cache.pop_oldest() is None and cache.keys() == frozenset()


def test_a_cache_holds_at_least_one_entry() -> None:
    with pytest.raises(ValueError, match="at least 1, got 0"):
        FingerprintLRU(0)


def test_calls_from_many_threads_keep_the_limit() -> None:
    cache: FingerprintLRU[int, int] = FingerprintLRU(4)

    def churn(offset: int) -> None:
        for n in range(500):
            cache.put((offset + n) % 10, 1, n)
            cache.get(n % 10, 1)

    threads = [threading.Thread(target=churn, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 4 and len(cache.values()) == 4


def test_files_fingerprint_sees_a_file_replaced_inside_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "controlnet"
    (folder / "sub").mkdir(parents=True)
    weights = folder / "sub" / "weights.safetensors"
    weights.write_bytes(b"one")
    os.utime(weights, ns=(1_000_000_000, 1_000_000_000))
    before = files_fingerprint(folder)
    os.utime(weights, ns=(2_000_000_000, 2_000_000_000))
    assert files_fingerprint(folder) != before
    assert files_fingerprint(weights) == 2_000_000_000
    assert files_fingerprint(tmp_path / "gone") == 0
