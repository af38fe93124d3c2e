"""The run-time S3 setting (`update_s3`) and the interface the object store reads it through (the job store
implements it, so objects/ never imports the job store)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import SecretStr

from sdserver.config import Settings


class StorageSettingSource(Protocol):
    """Where the persisted storage setting lives (the control table); None means the environment's store."""

    def load_storage(self) -> S3Config | None: ...


@dataclass(frozen=True)
class S3Config:
    """Object-store settings set at run time by `update_s3`; overrides the S3 settings of the environment."""

    bucket: str
    prefix: str
    endpoint_url: str | None
    region: str
    public_base_url: str | None
    access_key_id: str
    secret_access_key: str

    def apply_to(self, settings: Settings) -> Settings:
        """`settings` with storage switched to this bucket (everything else, like link lifetimes, kept)."""
        return settings.model_copy(
            update={
                "storage": "s3",
                "s3_bucket": self.bucket,
                "s3_prefix": self.prefix,
                "s3_endpoint_url": self.endpoint_url,
                "s3_region": self.region,
                "s3_public_base_url": self.public_base_url,
                "s3_access_key_id": SecretStr(self.access_key_id),
                "s3_secret_access_key": SecretStr(self.secret_access_key),
            }
        )

    def public(self) -> dict[str, Any]:
        """What may be shown: never the secret, and only the last characters of the access key id."""
        key_id = self.access_key_id
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "public_url": self.public_base_url,
            "aws_access_key_id": f"…{key_id[-4:]}" if len(key_id) > 8 else "…",
        }

    def scrub(self, text: str) -> str:
        """`text` with both credentials blanked out, for messages that may quote what a server sent back."""
        for secret in (self.secret_access_key, self.access_key_id):
            if secret:
                text = text.replace(secret, "***")
        return text
