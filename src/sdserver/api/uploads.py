"""Stores client images: bytes into the object store, ownership and expiry into the SQL database."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sdserver.auth import ApiKey
from sdserver.database import uploads, utcnow
from sdserver.images import DecodedImage
from sdserver.objects.base import ObjectStore, make_object_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SavedUpload:
    id: int
    object_key: str
    url: str


class UploadRegistry:
    """Writes the object first and the row second, and removes the object if the row cannot be written."""

    def __init__(self, engine: Engine, temp_ttl_s: int):
        self._engine = engine
        self._temp_ttl = timedelta(seconds=temp_ttl_s)

    def save(
        self,
        objects: ObjectStore,
        image: DecodedImage,
        *,
        data: bytes | None = None,
        owner: ApiKey,
        endpoint: str,
        temp: bool,
    ) -> SavedUpload:
        """Store `data` (default: the image's original bytes) and record who uploaded it."""
        payload = image.data if data is None else data
        key = make_object_key("uploads", image.ext, temp=temp)
        stored = objects.put(key, payload, image.content_type)
        now = utcnow()
        try:
            with self._engine.begin() as conn:
                upload_id = conn.execute(
                    sa.insert(uploads)
                    .values(
                        owner_key_id=owner.id,
                        object_key=key,
                        content_type=image.content_type,
                        size=len(payload),
                        width=image.width,
                        height=image.height,
                        endpoint=endpoint,
                        created_at=now,
                        expires_at=now + self._temp_ttl if temp else None,
                    )
                    .returning(uploads.c.id)
                ).scalar_one()
        except Exception:
            # No row means nobody can ever find the object again: do not leave it behind.
            objects.delete(key)
            raise
        return SavedUpload(id=upload_id, object_key=key, url=stored.url)

    def forget_expired(self) -> int:
        """Drop the rows of temporary uploads whose objects the store has purged."""
        with self._engine.begin() as conn:
            result = conn.execute(sa.delete(uploads).where(uploads.c.expires_at < utcnow()))
        return int(result.rowcount or 0)
