"""Everything a request handler needs, built once from the settings when the app is created."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from sdserver.api.models import ModelCatalog
from sdserver.api.uploads import UploadRegistry
from sdserver.auth import KeyStore
from sdserver.catalog.registry import ModelRegistry
from sdserver.config import Settings
from sdserver.database import create_db_engine, server_secret
from sdserver.images import ImageLimits
from sdserver.jobstore.control import ControlStore
from sdserver.jobstore.store import JobStore
from sdserver.netguard import FetchPolicy
from sdserver.objects.local import LocalObjectStore
from sdserver.objects.switching import SwitchingObjectStore, open_switching_store


@dataclass
class Services:
    settings: Settings
    engine: Engine
    keys: KeyStore
    jobs: JobStore
    models: ModelCatalog
    registry: ModelRegistry
    uploads: UploadRegistry
    # Where new objects go (local folder or S3; `update_s3` switches it at run time), reading earlier stores too.
    objects: SwitchingObjectStore
    # The local folder is always served, so links handed out before a switch to S3 keep working.
    local_files: LocalObjectStore
    image_limits: ImageLimits
    fetch_policy: FetchPolicy
    # The control channel to the workers (commands, persisted settings) and the secret local links are signed with.
    control: ControlStore
    signing_secret: bytes

    @classmethod
    def build(cls, settings: Settings, engine: Engine | None = None) -> Services:
        engine = engine or create_db_engine(settings.sql_url)
        secret = (
            settings.signing_secret.get_secret_value().encode()
            if settings.signing_secret
            else server_secret(engine, "link_signing")
        )
        control = ControlStore(engine)
        # A storage setting persisted by update_s3 wins over the environment's.
        objects = open_switching_store(settings, control, signing_secret=secret)
        registry = ModelRegistry(engine)
        return cls(
            settings=settings,
            engine=engine,
            keys=KeyStore(engine),
            jobs=JobStore(engine),
            models=ModelCatalog(settings, registry),
            registry=registry,
            uploads=UploadRegistry(engine, settings.temp_ttl_s),
            objects=objects,
            local_files=objects.local,
            image_limits=ImageLimits.from_settings(settings),
            fetch_policy=FetchPolicy.from_settings(settings),
            control=control,
            signing_secret=secret,
        )
