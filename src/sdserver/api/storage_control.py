"""The API's side of a run-time storage switch: `update_s3` (check, persist, switch, tell the workers), and
following switches made through another API replica."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field
from starlette.concurrency import run_in_threadpool

from sdserver.api.fields import OptionalText, RequiredText, validate_request
from sdserver.api.schemas import LenientRequest
from sdserver.api.services import Services
from sdserver.config import S3Config
from sdserver.errors import SdError, StorageError, ValidationError
from sdserver.jobstore.control import Command
from sdserver.objects.switching import build_store, follow_storage

log = logging.getLogger(__name__)

# A probe against a wrong endpoint must fail within seconds, not after boto3's default minute of retries.
_PROBE_CONNECT_S = 3.0
_PROBE_READ_S = 10.0
_FOLLOW_INTERVAL_S = 2.0


class UpdateS3Request(LenientRequest):
    endpoint_url: OptionalText = Field(default=None, description="S3 endpoint (MinIO, R2, ...); empty: AWS.")
    region_name: OptionalText = Field(default=None, description="Region; default us-east-1.")
    aws_access_key_id: RequiredText = Field(description="Access key id. Never shown back in full.")
    aws_secret_access_key: RequiredText = Field(description="Secret access key. Never shown back or logged.")
    image_directory: OptionalText = Field(
        default=None,
        description="Where images go: `bucket/prefix` (or just `bucket`); with `bucket` given, only the prefix.",
    )
    bucket: OptionalText = Field(default=None, description="Bucket name; optional if image_directory starts with it.")
    public_url: OptionalText = Field(
        default=None, description="Public base URL of the bucket (CDN); without it links are presigned."
    )


def s3_config_from(values: dict[str, Any]) -> S3Config:
    request = validate_request(UpdateS3Request, values)
    directory = (request.image_directory or "").strip().strip("/")
    if request.bucket:
        bucket, prefix = request.bucket.strip().strip("/"), directory
    else:
        if not directory:
            raise ValidationError.for_field(
                "image_directory",
                "must name the bucket (bucket/prefix) when no bucket is given",
                request.image_directory,
            )
        bucket, _, prefix = directory.partition("/")
    if not bucket or "/" in bucket:
        raise ValidationError.for_field("bucket", "must be a bucket name without slashes", request.bucket)
    for name in ("endpoint_url", "public_url"):
        url = getattr(request, name)
        if url is not None and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc):
            raise ValidationError.for_field(name, "must be an http(s) URL", url)
    return S3Config(
        bucket=bucket,
        prefix=prefix.strip("/"),
        endpoint_url=request.endpoint_url,
        region=request.region_name or "us-east-1",
        public_base_url=request.public_url.rstrip("/") if request.public_url else None,
        access_key_id=request.aws_access_key_id.strip(),
        secret_access_key=request.aws_secret_access_key.strip(),
    )


def switch_to_s3(services: Services, config: S3Config) -> None:
    """Build the store, prove it works (write, read, delete), then persist it, switch, and tell the workers.

    Nothing changes unless the probe passed; errors never quote the credentials.
    """
    # Imported here: boto3 is slow to import and only a switch to S3 needs it.
    from sdserver.objects.s3 import S3ObjectStore

    try:
        probe_store = S3ObjectStore.from_settings(
            config.apply_to(services.settings),
            connect_timeout_s=_PROBE_CONNECT_S,
            read_timeout_s=_PROBE_READ_S,
            max_attempts=1,
        )
        probe_store.probe()
    except SdError as exc:
        raise StorageError(f"The S3 settings do not work, nothing was changed: {config.scrub(exc.message)}") from None
    # The store that serves traffic gets the normal timeouts and retries.
    store = build_store(services.settings, config, signing_secret=services.signing_secret)
    services.control.save_storage(config)
    services.objects.switch(store, config)
    services.control.issue(Command.STORAGE)
    log.info("object store switched to S3 bucket %s (endpoint %s)", config.bucket, config.endpoint_url or "AWS")


async def follow_storage_forever(services: Services) -> None:
    """Another API replica may switch the store: pick the persisted setting up within seconds."""
    while True:
        await asyncio.sleep(_FOLLOW_INTERVAL_S)
        try:
            switched = await run_in_threadpool(
                follow_storage,
                services.objects,
                services.settings,
                services.control,
                signing_secret=services.signing_secret,
            )
            if switched:
                log.info("object store switched to the persisted storage settings")
        except Exception:
            # A database or S3 outage must not end the loop; the next round tries again.
            log.exception("following the persisted storage settings failed")
