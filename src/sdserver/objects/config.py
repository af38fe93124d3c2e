"""The interface the object store reads its run-time S3 setting through (the job store's control table
implements it, so objects/ never imports the job store)."""

from __future__ import annotations

from typing import Protocol

from sdserver.config import S3Config


class StorageSettingSource(Protocol):
    """Where the persisted storage setting lives (the control table); None means the environment's store."""

    def load_storage(self) -> S3Config | None: ...
