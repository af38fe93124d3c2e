"""Object store: where image bytes live (a local folder here, S3 in `storage_s3`), under keys only the server makes."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import hmac
import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, Protocol, get_args
from urllib.parse import SplitResult, unquote, urlsplit

from sdserver.errors import NotFoundError, StorageError

if TYPE_CHECKING:
    from sdserver.config import Settings

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


class LocalObjectStore:
    """Files under `root/<key>`, served by the API at `{base_url}/files/<key>`; temp links carry an HMAC.

    A temp link's expiry is the creation time written in its key plus the TTL, so `url_for` gives the same
    link every time, before and after the object is written.
    """

    def __init__(self, root: Path, base_url: str, signing_secret: bytes, temp_ttl_s: int) -> None:
        if not signing_secret:
            raise ValueError("signing_secret must not be empty: temp links would be forgeable")
        self.root = root
        self._files_url = f"{base_url.rstrip('/')}/files/"
        self._secret = signing_secret
        self._ttl_s = temp_ttl_s

    def path_for(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        path = self.path_for(key)
        check_content_type(key, content_type)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(path, data)
        except OSError as exc:
            raise StorageError(f"Could not write object {key}: {exc.strerror or exc}") from exc
        return StoredObject(key, self.url_for(key), len(data), content_type, temp_expires_at(key, self._ttl_s))

    def get(self, key: str) -> bytes:
        path = self.path_for(key)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError(f"No such object: {key}") from exc
        except OSError as exc:
            raise StorageError(f"Could not read object {key}: {exc.strerror or exc}") from exc

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def delete(self, key: str) -> None:
        try:
            self.path_for(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"Could not delete object {key}: {exc.strerror or exc}") from exc

    def url_for(self, key: str) -> str:
        expires_at = temp_expires_at(check_key(key), self._ttl_s)
        if expires_at is None:
            return f"{self._files_url}{key}"
        expires = int(expires_at.timestamp())
        return f"{self._files_url}{key}?expires={expires}&sig={self._sign(key, expires)}"

    def key_from_url(self, url: str) -> str | None:
        rest = url_path_after(url, self._files_url)
        return rest if rest is not None and is_server_key(rest) else None

    def check_link(self, key: str, expires: str | None, sig: str | None, now: datetime | None = None) -> bool:
        """May this link be served? Permanent keys need nothing; temp keys a valid, unexpired signature."""
        if not is_server_key(key):
            return False
        if not is_temp_key(key):
            return True
        if expires is None or sig is None or not _DIGITS.fullmatch(expires) or not _HEX_SHA256.fullmatch(sig):
            return False
        if int(expires) <= as_utc(now).timestamp():
            return False
        return hmac.compare_digest(self._sign(key, int(expires)), sig)

    def purge_expired(self, now: datetime | None = None) -> int:
        """Delete temp objects whose link has expired (creation time in the key + TTL); return how many."""
        moment = as_utc(now)
        temp_root = self.root / TEMP_FOLDER
        removed = 0
        try:
            candidates = [path for path in temp_root.rglob("*") if path.is_file()]
            for path in candidates:
                expires_at = temp_expires_at(path.relative_to(self.root).as_posix(), self._ttl_s)
                if expires_at is None or expires_at > moment:
                    continue
                with contextlib.suppress(FileNotFoundError):  # purged meanwhile by another process
                    path.unlink()
                    removed += 1
        except OSError as exc:
            raise StorageError(f"Could not purge expired objects: {exc.strerror or exc}") from exc
        return removed

    def probe(self) -> None:
        probe_store(self)

    def _sign(self, key: str, expires: int) -> str:
        return hmac.new(self._secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers see the old file or the whole new one, never a torn write.

    A writer killed mid-write (SIGKILL, power loss) leaves its temp file behind; the next write of the same key
    (the job's retry) removes it. Every writer of a key writes the same object (one job's output, one upload).
    """
    prefix = f".{path.name}."
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            # mkstemp makes 0600; objects are public by URL and may be served by a proxy running as another user.
            os.fchmod(handle.fileno(), 0o644)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.replace(tmp_name, path)
        except FileNotFoundError:
            # Another writer of this key (a worker whose lease ran out) put it in place first and took ours
            # for a leftover: the object is whole either way.
            if not path.is_file():
                raise
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    for leftover in path.parent.glob(f"{glob.escape(prefix)}*.part"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def create_object_store(settings: Settings, *, signing_secret: bytes) -> ObjectStore:
    """The store `settings.storage` names. `signing_secret` signs local temp links (S3 presigns its own)."""
    if settings.storage == "s3":
        # Imported here: boto3 is slow to import and only S3 deployments need it.
        from sdserver.storage_s3 import S3ObjectStore

        return S3ObjectStore.from_settings(settings)
    return LocalObjectStore(settings.objects_dir, settings.external_base_url, signing_secret, settings.temp_ttl_s)
