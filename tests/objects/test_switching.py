"""The switching object store over real local folders: writes go to the active store, reads and links fall back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sdserver.errors import NotFoundError
from sdserver.objects.base import make_object_key
from sdserver.objects.local import LocalObjectStore
from sdserver.objects.switching import SwitchingObjectStore

SECRET = b"switch-test-secret"


def local(root: Path, host: str) -> LocalObjectStore:
    return LocalObjectStore(root, f"http://{host}", SECRET, 3600)


@pytest.fixture
def stores(tmp_path: Path) -> tuple[SwitchingObjectStore, LocalObjectStore, LocalObjectStore]:
    home, elsewhere = local(tmp_path / "home", "home.test"), local(tmp_path / "new", "new.test")
    return SwitchingObjectStore(home, home), home, elsewhere


def test_after_a_switch_new_objects_go_to_the_new_store_and_old_ones_stay_readable(
    stores: tuple[SwitchingObjectStore, LocalObjectStore, LocalObjectStore],
) -> None:
    switching, home, elsewhere = stores
    before = make_object_key("uploads", "png", temp=False)
    old_link = switching.put(before, b"old", "image/png").url
    switching.switch(elsewhere, None)
    after = make_object_key("uploads", "png", temp=False)
    stored = switching.put(after, b"new", "image/png")
    assert stored.url.startswith("http://new.test/files/")
    assert elsewhere.exists(after) and not home.exists(after)
    assert switching.get(before) == b"old" and switching.get(after) == b"new"
    assert switching.exists(before) and switching.key_from_url(old_link) == before
    assert switching.url_for(before).startswith("http://new.test/")  # new links always name the active store
    with pytest.raises(NotFoundError):
        switching.get(make_object_key("uploads", "png", temp=False))


def test_outputs_are_written_where_their_promised_link_points(
    stores: tuple[SwitchingObjectStore, LocalObjectStore, LocalObjectStore],
) -> None:
    switching, home, elsewhere = stores
    key = make_object_key("outputs", "png", temp=False)
    promised = switching.url_for(key)  # allocated before the switch
    switching.switch(elsewhere, None)
    assert switching.find_store_for_link(key, promised) is home
    assert switching.find_store_for_link(key, elsewhere.url_for(key)) is elsewhere
    assert switching.find_store_for_link(key, "http://unknown.test/files/" + key) is None


def test_purge_covers_the_local_folder_after_a_switch(
    stores: tuple[SwitchingObjectStore, LocalObjectStore, LocalObjectStore],
) -> None:
    switching, home, elsewhere = stores
    stale = make_object_key("uploads", "png", temp=True, now=datetime.now(UTC) - timedelta(days=2))
    home.put(stale, b"x", "image/png")
    switching.switch(elsewhere, None)
    assert switching.purge_expired() == 1
    assert not home.exists(stale)
