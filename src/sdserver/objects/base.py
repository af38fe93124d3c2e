"""The object-store interface and its key rules: keys only the server makes, content types, link parsing, probes."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Literal, Protocol, get_args, runtime_checkable
from urllib.parse import SplitResult, unquote, urlsplit

from sdserver.errors import NotFoundError, StorageError

ObjectKind = Literal["uploads", "outputs", "probes"]
ImageExt = Literal["png", "jpg", "webp"]

CONTENT_TYPES: Final[dict[str, str]] = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}
TEMP_FOLDER: Final = "temp"
# SigV4 refuses presigned links that live longer than this.
MAX_PRESIGN_S: Final = 7 * 24 * 3600

_KINDS = "|".join(get_args(ObjectKind))
_EXTS = "|".join(get_args(ImageExt))
_DATE = r"[0-9]{4}/[0-9]{2}/[0-9]{2}"
# Permanent: uploads/2025/01/31/<uuid hex>.png. Temp: temp/uploads/2025/01/31/<created unix s>-<uuid hex>.png.
# Only these characters can appear, so a matching key is never `..`, absolute, or percent-encoded.
_PERMANENT_KEY = re.compile(rf"(?:{_KINDS})/{_DATE}/[0-9a-f]{{32}}\.(?:{_EXTS})")
_TEMP_KEY = re.compile(rf"{TEMP_FOLDER}/(?:{_KINDS})/{_DATE}/(?P<created>[0-9]{{10}})-[0-9a-f]{{32}}\.(?:{_EXTS})")
# Model files: content-addressed by their sha256, so equal files are stored once and a key names exactly one
# content. Never served under /files (is_server_key is false for them): weights go only to workers.
MODEL_BLOB_FOLDER: Final = "models/sha256"
MODEL_BLOB_TYPE: Final = "application/octet-stream"
_MODEL_BLOB_KEY = re.compile(r"models/sha256/[0-9a-f]{64}")
_DIGITS = re.compile(r"[0-9]{1,12}")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class StoredObject:
    """What `put` wrote. `expires_at` is set for temp objects: their link dies and they get purged then."""

    key: str
    url: str
    size: int
    content_type: str
    expires_at: datetime | None


class ObjectStore(Protocol):
    """Bytes under server-made keys. Sync: the API calls it in a thread, workers call it directly."""

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def url_for(self, key: str) -> str: ...
    def key_from_url(self, url: str) -> str | None: ...
    def purge_expired(self, now: datetime | None = None) -> int: ...
    def probe(self) -> None: ...


@runtime_checkable
class BlobStore(Protocol):
    """Large files (model weights) streamed between a path on disk and a model-blob key, never held in memory."""

    def put_blob(self, key: str, source: Path) -> None: ...
    def get_blob(self, key: str, target: Path) -> None: ...
    def has_blob(self, key: str) -> bool: ...


def model_blob_key(sha256: str) -> str:
    """The key of the model file with this sha256 (hex): `models/sha256/<hex>`."""
    return check_model_blob_key(f"{MODEL_BLOB_FOLDER}/{sha256}")


def check_model_blob_key(key: str) -> str:
    """Refuse anything but a model-blob key: the hex digest is the only variable part, so no path tricks."""
    if not isinstance(key, str) or not _MODEL_BLOB_KEY.fullmatch(key):
        raise ValueError(f"not a model blob key: {key!r}")
    return key


def make_object_key(kind: ObjectKind, ext: ImageExt, *, temp: bool, now: datetime | None = None) -> str:
    """A fresh key `{kind}/YYYY/MM/DD/{uuid}.{ext}`; temp keys live under `temp/` and carry their creation
    time, so a temp link's expiry can be derived from the key alone (before the object even exists)."""
    moment = as_utc(now)
    if kind not in get_args(ObjectKind) or ext not in get_args(ImageExt):
        raise ValueError(f"unknown object kind or extension: {kind!r}, {ext!r}")
    day = moment.strftime("%Y/%m/%d")
    if temp:
        return f"{TEMP_FOLDER}/{kind}/{day}/{int(moment.timestamp()):010d}-{uuid.uuid4().hex}.{ext}"
    return f"{kind}/{day}/{uuid.uuid4().hex}.{ext}"


def is_server_key(key: str) -> bool:
    """True only for keys `make_object_key` could have made."""
    return bool(_PERMANENT_KEY.fullmatch(key) or _TEMP_KEY.fullmatch(key))


def is_temp_key(key: str) -> bool:
    return _TEMP_KEY.fullmatch(key) is not None


def temp_expires_at(key: str, ttl_s: int) -> datetime | None:
    """When a temp key's link expires and it may be purged; None for permanent (or foreign) keys."""
    match = _TEMP_KEY.fullmatch(key)
    if match is None:
        return None
    return datetime.fromtimestamp(int(match["created"]), UTC) + timedelta(seconds=ttl_s)


def content_type_for(key: str) -> str:
    return CONTENT_TYPES[key.rsplit(".", 1)[-1]]


def check_key(key: str) -> str:
    """Refuse anything that is not a server key, so no client string ever reaches a path or a bucket."""
    if not isinstance(key, str) or not is_server_key(key):
        raise NotFoundError("No such object")
    return key


def check_content_type(key: str, content_type: str) -> None:
    """A mismatch is a bug in the caller: the local file server derives the type from the extension."""
    expected = content_type_for(key)
    if content_type != expected:
        raise ValueError(f"content_type {content_type!r} does not match key {key!r} (expected {expected!r})")


def url_path_after(url: str, base: str) -> str | None:
    """The decoded path of `url` after `base`'s path when both have the same scheme, host and port.

    Query and fragment are ignored. URLs with user info are refused: `http://ours@evil/` goes to `evil`.
    The caller still validates the remainder as a key, which rules out `..` and encoded tricks.
    """
    try:
        got, want = urlsplit(url.strip()), urlsplit(base)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return None
    if _origin(got) is None or _origin(got) != _origin(want):
        return None
    path, prefix = unquote(got.path), unquote(want.path)
    if not prefix.endswith("/"):
        prefix += "/"
    return path[len(prefix) :] if path.startswith(prefix) else None


def _origin(parts: SplitResult) -> tuple[str, str, int] | None:
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80)


def probe_store(store: ObjectStore) -> None:
    """Write, read back and delete a small temp object (temp, so a half-done probe is purged later)."""
    key = make_object_key("probes", "png", temp=True)
    payload = b"sdserver probe " + uuid.uuid4().hex.encode()
    try:
        store.put(key, payload, CONTENT_TYPES["png"])
        if store.get(key) != payload:
            raise StorageError("The object store returned different bytes for the probe object")
        store.delete(key)
    except NotFoundError as exc:
        raise StorageError("The probe object was written but could not be read back") from exc


def as_utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    # A naive datetime is taken as UTC, the zone every key and expiry here is in.
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
