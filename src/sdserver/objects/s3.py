"""The S3 object store (any S3 server, through boto3): public or presigned links, botocore errors mapped."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from sdserver.errors import NotFoundError, StorageError
from sdserver.objects.base import (
    MAX_PRESIGN_S,
    MODEL_BLOB_TYPE,
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

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef, PutObjectRequestTypeDef

    from sdserver.config import Settings

# head_object has no body, so a missing key comes back as a bare "404".
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_DELETE_BATCH = 1000  # the DeleteObjects limit


class S3ObjectStore:
    """Objects at `{prefix}{key}` in one bucket.

    Links: `{public_base_url}/{prefix}{key}` for permanent keys when a public base URL is set; otherwise
    presigned GETs (temp keys: `temp_ttl_s`, capped at the SigV4 maximum of 7 days; permanent keys:
    `presign_expiry_s`). Temp objects are purged by their LastModified time.
    """

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str = "",
        public_base_url: str | None = None,
        presign_expiry_s: int = MAX_PRESIGN_S,
        temp_ttl_s: int = 24 * 3600,
        endpoint_url: str | None = None,
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self._public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self._presign_expiry_s = min(presign_expiry_s, MAX_PRESIGN_S)
        self._temp_ttl_s = temp_ttl_s
        self._url_bases = self._link_bases(endpoint_url or client.meta.endpoint_url)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 10.0,
        max_attempts: int = 3,
    ) -> S3ObjectStore:
        """Build the client from settings; the timeouts are keyword arguments so a probe can fail fast.

        `max_attempts` counts every try, the first included. The defaults bound a dead or hanging S3 to
        3 x (3 s + 10 s) + 3 s of backoff, so an upload or an output write fails in under a minute.
        """
        if not settings.s3_bucket:
            raise StorageError("S3 storage needs a bucket name")
        config = Config(
            signature_version="s3v4",
            # Path style works with every S3 server (MinIO, SeaweedFS, R2) and with dotted bucket names.
            s3={"addressing_style": "path"},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            # total_max_attempts counts every try; botocore's `max_attempts` key would count retries only.
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
        )
        key_id, secret = settings.s3_access_key_id, settings.s3_secret_access_key
        try:
            # A session per store: boto3's default session is not safe to share between threads.
            client = boto3.session.Session().client(
                "s3",
                endpoint_url=settings.s3_endpoint_url,
                region_name=settings.s3_region,
                aws_access_key_id=key_id.get_secret_value() if key_id else None,
                aws_secret_access_key=secret.get_secret_value() if secret else None,
                config=config,
            )
        except (ValueError, BotoCoreError) as exc:
            raise StorageError(f"Invalid S3 settings: {type(exc).__name__}: {exc}") from exc
        return cls(
            client,
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            public_base_url=settings.s3_public_base_url,
            presign_expiry_s=settings.s3_presign_expiry_s,
            temp_ttl_s=settings.temp_ttl_s,
        )

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        check_key(key)
        check_content_type(key, content_type)
        request: PutObjectRequestTypeDef = {
            "Bucket": self._bucket,
            "Key": self._prefix + key,
            "Body": data,
            "ContentType": content_type,
        }
        expires_at = temp_expires_at(key, self._temp_ttl_s)
        if expires_at is not None:
            # Informational for caches and lifecycle tooling; purge_expired does the deleting.
            request["Expires"] = expires_at
        with _s3_errors("write", key):
            self._client.put_object(**request)
        return StoredObject(key, self.url_for(key), len(data), content_type, expires_at)

    def get(self, key: str) -> bytes:
        with _s3_errors("read", check_key(key)):
            response = self._client.get_object(Bucket=self._bucket, Key=self._prefix + key)
            return response["Body"].read()

    def exists(self, key: str) -> bool:
        check_key(key)  # outside the try: a foreign key is refused, not reported missing
        try:
            with _s3_errors("look up", key):
                self._client.head_object(Bucket=self._bucket, Key=self._prefix + key)
        except NotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        # S3 deletes are idempotent: a missing key is a success.
        with _s3_errors("delete", check_key(key)):
            self._client.delete_object(Bucket=self._bucket, Key=self._prefix + key)

    # --- BlobStore: model files, streamed with boto3's managed (multipart) transfers

    def put_blob(self, key: str, source: Path) -> None:
        check_model_blob_key(key)
        if self.has_blob(key):
            return  # content-addressed: same key, same bytes
        with _s3_errors("write", key):
            self._client.upload_file(
                str(source), self._bucket, self._prefix + key, ExtraArgs={"ContentType": MODEL_BLOB_TYPE}
            )

    def get_blob(self, key: str, target: Path) -> None:
        with _s3_errors("read", check_model_blob_key(key)):
            self._client.download_file(self._bucket, self._prefix + key, str(target))

    def has_blob(self, key: str) -> bool:
        check_model_blob_key(key)
        try:
            with _s3_errors("look up", key):
                self._client.head_object(Bucket=self._bucket, Key=self._prefix + key)
        except NotFoundError:
            return False
        return True

    def url_for(self, key: str) -> str:
        temp = is_temp_key(check_key(key))
        if self._public_base_url and not temp:
            return f"{self._public_base_url}/{quote(self._prefix + key)}"
        expires_in = min(self._temp_ttl_s, MAX_PRESIGN_S) if temp else self._presign_expiry_s
        # Signing is local (no request), so links can be made before the object is written.
        with _s3_errors("sign a link for", key):
            return self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self._bucket, "Key": self._prefix + key}, ExpiresIn=expires_in
            )

    def key_from_url(self, url: str) -> str | None:
        for base in self._url_bases:
            rest = url_path_after(url, base)
            if rest is not None and is_server_key(rest):
                return rest
        return None

    def purge_expired(self, now: datetime | None = None) -> int:
        """Delete temp objects last written more than `temp_ttl_s` ago; return how many."""
        cutoff = as_utc(now) - timedelta(seconds=self._temp_ttl_s)
        listed_prefix = f"{self._prefix}{TEMP_FOLDER}/"
        doomed: list[ObjectIdentifierTypeDef] = []
        with _s3_errors("list", listed_prefix):
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=listed_prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    name = item.get("Key", "")
                    # Only our own temp keys: a shared bucket may hold other things under the same folder.
                    if is_temp_key(name[len(self._prefix) :]) and item["LastModified"] <= cutoff:
                        doomed.append({"Key": name})
        removed = 0
        for start in range(0, len(doomed), _DELETE_BATCH):
            batch = doomed[start : start + _DELETE_BATCH]
            with _s3_errors("purge", listed_prefix):
                reply = self._client.delete_objects(Bucket=self._bucket, Delete={"Objects": batch, "Quiet": True})
            errors = reply.get("Errors", [])
            removed += len(batch) - len(errors)
            if errors:
                first = errors[0]
                raise StorageError(
                    f"S3 purge deleted {removed} objects but failed on {len(errors)}: "
                    f"{first.get('Code', 'unknown')} {first.get('Message', '')}".rstrip()
                )
        return removed

    def probe(self) -> None:
        probe_store(self)

    def _link_bases(self, endpoint_url: str) -> list[str]:
        """Every URL prefix this store's links start with: public, path-style and virtual-host presigned."""
        bases = [f"{self._public_base_url}/{self._prefix}"] if self._public_base_url else []
        endpoint = urlsplit(endpoint_url)
        root = f"{endpoint.scheme}://{endpoint.netloc}{endpoint.path.rstrip('/')}"
        bases.append(f"{root}/{self._bucket}/{self._prefix}")
        bases.append(f"{endpoint.scheme}://{self._bucket}.{endpoint.netloc}/{self._prefix}")
        return bases


@contextmanager
def _s3_errors(action: str, key: str) -> Iterator[None]:
    """Missing objects become NotFoundError; anything else from botocore becomes StorageError.

    Messages carry the S3 error code and text, never credentials (botocore never puts the secret in one).
    """
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "unknown"))
        if code in _MISSING_CODES:
            raise NotFoundError(f"No such object: {key}") from exc
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        detail = str(error.get("Message", ""))[:200]
        raise StorageError(f"S3 could not {action} {key}: {code} (HTTP {status}) {detail}".rstrip()) from exc
    except BotoCoreError as exc:
        raise StorageError(f"S3 could not {action} {key}: {type(exc).__name__}: {exc}") from exc
