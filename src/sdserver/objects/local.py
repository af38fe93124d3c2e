"""The local-folder object store: files under `<data_dir>/objects`, served at `/files/<key>`, temp links signed."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import hmac
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from sdserver.errors import NotFoundError, StorageError
from sdserver.objects.base import (
    _DIGITS,
    _HEX_SHA256,
    TEMP_FOLDER,
    StoredObject,
    as_utc,
    check_content_type,
    check_key,
    check_model_blob_key,
    is_server_key,
    is_temp_key,
    probe_store,
    temp_expires_at,
    url_path_after,
)


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

    # --- BlobStore: model files, copied in chunks (they may be many GiB)

    def put_blob(self, key: str, source: Path) -> None:
        path = self.root.joinpath(*check_model_blob_key(key).split("/"))
        if path.is_file() and path.stat().st_size == source.stat().st_size:
            return  # content-addressed: same key, same bytes
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _copy_atomically(source, path)
        except OSError as exc:
            raise StorageError(f"Could not write object {key}: {exc.strerror or exc}") from exc

    def get_blob(self, key: str, target: Path) -> None:
        path = self.root.joinpath(*check_model_blob_key(key).split("/"))
        try:
            shutil.copyfile(path, target)
        except FileNotFoundError as exc:
            raise NotFoundError(f"No such object: {key}") from exc
        except OSError as exc:
            raise StorageError(f"Could not read object {key}: {exc.strerror or exc}") from exc

    def has_blob(self, key: str) -> bool:
        return self.root.joinpath(*check_model_blob_key(key).split("/")).is_file()

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


def _copy_atomically(source: Path, path: Path) -> None:
    """Copy to a temp file beside `path`, then rename: a reader never sees half a model file."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


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
