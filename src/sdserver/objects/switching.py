"""The object store a process uses: one active store that `update_s3` can swap at run time, plus the stores
it replaced, so objects written before a switch stay readable and their links keep resolving."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from sdserver.config import S3Config, Settings
from sdserver.errors import NotFoundError
from sdserver.objects.base import BlobStore, ObjectStore, StoredObject
from sdserver.objects.config import StorageSettingSource
from sdserver.objects.local import LocalObjectStore

# Stores kept readable after being replaced (the local folder always is): bounded, since each S3 store
# holds a client and its connection pool.
_MAX_EARLIER = 4


class SwitchingObjectStore:
    """An `ObjectStore` that writes to the active store and reads from it first, then from earlier ones.

    Switching is one reference swap under a lock: a request that already picked a store finishes on it, and
    every request started later sees the new one. `config` is the persisted S3 setting that built the active
    store (None: the environment's default).
    """

    def __init__(self, active: ObjectStore, local: LocalObjectStore, config: S3Config | None = None) -> None:
        self._lock = threading.Lock()
        self._active = active
        self._local = local
        self._earlier: tuple[ObjectStore, ...] = ()
        self.config = config

    @property
    def active(self) -> ObjectStore:
        return self._active

    @property
    def local(self) -> LocalObjectStore:
        return self._local

    def switch(self, store: ObjectStore, config: S3Config | None) -> None:
        with self._lock:
            if store is self._active:
                return
            earlier = [self._active, *(s for s in self._earlier if s is not store)]
            self._earlier = tuple(earlier[:_MAX_EARLIER])
            self._active = store
            self.config = config

    def _stores(self) -> Iterator[ObjectStore]:
        """The active store first, then the ones it replaced, then the local folder; each once."""
        active, earlier = self._active, self._earlier
        seen: list[ObjectStore] = []
        for store in (active, *earlier, self._local):
            if not any(store is other for other in seen):
                seen.append(store)
                yield store

    def find_store_for_link(self, key: str, link: str) -> ObjectStore | None:
        """The store whose link for `key` is `link`, if this process knows it. Outputs are written there, so a job
        queued before a switch writes where its `future_links` already point."""
        for store in self._stores():
            if store.key_from_url(link) == key:
                return store
        return None

    # --- ObjectStore

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        return self._active.put(key, data, content_type)

    def get(self, key: str) -> bytes:
        missing: NotFoundError | None = None
        for store in self._stores():
            try:
                return store.get(key)
            except NotFoundError as exc:
                missing = missing or exc
        raise missing or NotFoundError(f"No such object: {key}")

    def exists(self, key: str) -> bool:
        return any(store.exists(key) for store in self._stores())

    def delete(self, key: str) -> None:
        for store in self._stores():
            store.delete(key)

    def url_for(self, key: str) -> str:
        return self._active.url_for(key)

    # --- BlobStore: written to the active store; read from the first store that has the blob

    def put_blob(self, key: str, source: Path) -> None:
        _blobs(self._active).put_blob(key, source)

    def get_blob(self, key: str, target: Path) -> None:
        for store in self._stores():
            if isinstance(store, BlobStore) and store.has_blob(key):
                store.get_blob(key, target)
                return
        raise NotFoundError(f"No such object: {key}")

    def has_blob(self, key: str) -> bool:
        return any(isinstance(store, BlobStore) and store.has_blob(key) for store in self._stores())

    def key_from_url(self, url: str) -> str | None:
        for store in self._stores():
            key = store.key_from_url(url)
            if key is not None:
                return key
        return None

    def purge_expired(self, now: datetime | None = None) -> int:
        # The local folder's temp files are purged even after a switch: nothing else would remove them.
        removed = self._active.purge_expired(now)
        if self._active is not self._local:
            removed += self._local.purge_expired(now)
        return removed

    def probe(self) -> None:
        self._active.probe()


def _blobs(store: ObjectStore) -> BlobStore:
    if not isinstance(store, BlobStore):
        raise TypeError(f"{type(store).__name__} cannot hold model files")
    return store


def build_store(settings: Settings, config: S3Config | None, *, signing_secret: bytes) -> ObjectStore:
    """The store a persisted S3 setting names, or the environment's default store when there is none."""
    return create_object_store(config.apply_to(settings) if config else settings, signing_secret=signing_secret)


def open_switching_store(
    settings: Settings, control: StorageSettingSource, *, signing_secret: bytes
) -> SwitchingObjectStore:
    """The process's store at start: a persisted S3 setting (from `update_s3`) wins over the environment."""
    local = LocalObjectStore(settings.objects_dir, settings.external_base_url, signing_secret, settings.temp_ttl_s)
    config = control.load_storage()
    if config is None and settings.storage == "local":
        return SwitchingObjectStore(local, local)
    return SwitchingObjectStore(build_store(settings, config, signing_secret=signing_secret), local, config)


def follow_storage(
    objects: SwitchingObjectStore, settings: Settings, control: StorageSettingSource, *, signing_secret: bytes
) -> bool:
    """Rebuild the active store from the persisted setting if it changed; True when it switched."""
    config = control.load_storage()
    if config == objects.config:
        return False
    if config is None and settings.storage == "local":
        objects.switch(objects.local, None)
    else:
        objects.switch(build_store(settings, config, signing_secret=signing_secret), config)
    return True


def create_object_store(settings: Settings, *, signing_secret: bytes) -> ObjectStore:
    """The store `settings.storage` names. `signing_secret` signs local temp links (S3 presigns its own)."""
    if settings.storage == "s3":
        # Imported here: boto3 is slow to import and only S3 deployments need it.
        from sdserver.objects.s3 import S3ObjectStore

        return S3ObjectStore.from_settings(settings)
    return LocalObjectStore(settings.objects_dir, settings.external_base_url, signing_secret, settings.temp_ttl_s)
