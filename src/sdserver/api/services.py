"""Everything a request handler needs, built once from the settings when the app is created."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from sdserver.api.models import ModelCatalog
from sdserver.auth import KeyStore
from sdserver.config import Settings
from sdserver.database import create_db_engine, server_secret
from sdserver.images import ImageLimits
from sdserver.netguard import FetchPolicy
from sdserver.storage import LocalObjectStore, ObjectStore, create_object_store
from sdserver.store import JobStore
from sdserver.uploads import UploadRegistry


@dataclass
class Services:
    settings: Settings
    engine: Engine
    keys: KeyStore
    jobs: JobStore
    models: ModelCatalog
    uploads: UploadRegistry
    # The active object store (local folder or S3), where new objects go.
    store: ObjectStore
    # The local folder is always served, so links handed out before a switch to S3 keep working.
    local_files: LocalObjectStore
    image_limits: ImageLimits
    fetch_policy: FetchPolicy

    @classmethod
    def build(cls, settings: Settings, engine: Engine | None = None) -> Services:
        engine = engine or create_db_engine(settings.sql_url)
        secret = (
            settings.signing_secret.get_secret_value().encode()
            if settings.signing_secret
            else server_secret(engine, "link_signing")
        )
        local_files = LocalObjectStore(
            root=settings.objects_dir,
            base_url=settings.external_base_url,
            signing_secret=secret,
            temp_ttl_s=settings.temp_ttl_s,
        )
        store: ObjectStore = (
            local_files if settings.storage == "local" else create_object_store(settings, signing_secret=secret)
        )
        return cls(
            settings=settings,
            engine=engine,
            keys=KeyStore(engine),
            jobs=JobStore(engine),
            models=ModelCatalog(settings),
            uploads=UploadRegistry(engine, settings.temp_ttl_s),
            store=store,
            local_files=local_files,
            image_limits=ImageLimits.from_settings(settings),
            fetch_policy=FetchPolicy.from_settings(settings),
        )
