"""The app factory: builds the services, wires middleware, error handlers and routes. Never imports torch."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from sdserver import __version__
from sdserver.api.aliases import PREFIXES
from sdserver.api.body_limit import BodyLimitMiddleware
from sdserver.api.dialects import a1111, openai
from sdserver.api.docs_pages import install_docs_pages
from sdserver.api.job_replies import webhook_body
from sdserver.api.metrics import Metrics, RequestMetricsMiddleware
from sdserver.api.openapi_doc import install_openapi
from sdserver.api.openapi_tags import openapi_tags
from sdserver.api.replies import install_error_handlers, is_stablecog_path
from sdserver.api.routes import (
    controlnet,
    editing,
    files,
    generation,
    health,
    jobs,
    models,
    nsfw,
    playground,
    server,
    stablecog,
    uploads,
    upscale,
)
from sdserver.api.services import Services
from sdserver.api.storage_control import follow_storage_forever
from sdserver.config import Settings
from sdserver.netguard import FetchPolicy
from sdserver.webhooks import WebhookSender, webhook_secret

log = logging.getLogger(__name__)

# Multipart framing around Stablecog's single file part.
_MULTIPART_OVERHEAD = 64 * 1024
_PURGE_INTERVAL_S = 600.0
# Every API router the app serves, in matching order (the public pages are added on their own).
ROUTERS = tuple(
    module.router
    for module in (
        health,
        files,
        uploads,
        stablecog,
        generation,
        controlnet,
        upscale,
        editing,
        nsfw,
        models,
        server,
        jobs,
        openai,
        a1111,
    )
)


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    services = services or Services.build(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(_purge_expired_forever(services)),
            asyncio.create_task(_requeue_expired_forever(services)),
            asyncio.create_task(_webhook_sender(services).run_forever()),
            asyncio.create_task(follow_storage_forever(services)),
        ]
        _freeze_startup_objects()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # Stops the store's LISTEN thread on PostgreSQL.
            services.jobs.close()

    app = FastAPI(
        title="sdserver",
        version=__version__,
        description="Self-hosted, drop-in compatible Stable Diffusion API (ModelsLab) and Stablecog upload.",
        lifespan=lifespan,
        # Served by install_docs_pages from packaged assets: the default pages load Swagger UI from a CDN.
        docs_url=None,
        redoc_url=None,
        openapi_tags=openapi_tags(PREFIXES),
    )
    install_openapi(app)
    install_docs_pages(app)
    # Public pages like the docs, so outside ROUTERS (the key-checked API routes the route-walk tests cover).
    app.include_router(playground.router)
    app.state.services = services

    def body_limit_for(path: str) -> int:
        if is_stablecog_path(path):
            return min(settings.max_body_bytes, settings.max_image_bytes + _MULTIPART_OVERHEAD)
        return settings.max_body_bytes

    app.add_middleware(BodyLimitMiddleware, settings=settings, limit_for=body_limit_for)
    # Browser apps call these APIs directly; keys travel in the body or headers, never in cookies.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["*"],
        allow_headers=["*"],
        allow_credentials=False,
    )
    # Outermost, so refused and failed requests are counted too.
    app.state.metrics = Metrics(services.engine)
    app.add_middleware(RequestMetricsMiddleware, metrics=app.state.metrics)
    install_error_handlers(app, settings)
    for router in ROUTERS:
        app.include_router(router)
    return app


async def _purge_expired_forever(services: Services) -> None:
    """Delete temporary objects past their lifetime, and their rows, every few minutes."""
    while True:
        try:
            removed = await run_in_threadpool(services.objects.purge_expired)
            forgotten = await run_in_threadpool(services.uploads.forget_expired)
            if removed or forgotten:
                log.info("purged %d expired temporary objects (%d upload rows)", removed, forgotten)
        except Exception:
            # A store outage must not kill the loop; the next round tries again.
            log.exception("purging expired temporary objects failed")
        await asyncio.sleep(_PURGE_INTERVAL_S)


def _webhook_sender(services: Services) -> WebhookSender:
    """Webhooks leave from the API process, never from a worker's device loop."""
    settings = services.settings
    return WebhookSender(
        services.jobs,
        FetchPolicy.from_settings(settings),
        webhook_secret(settings, services.engine),
        lambda job: webhook_body(job, services.objects.get),
        settings,
    )


async def _requeue_expired_forever(services: Services) -> None:
    """Put jobs of dead workers back in the queue even while no worker is alive to do it."""
    interval = max(1.0, services.settings.job_lease_s / 3)
    while True:
        try:
            await run_in_threadpool(services.jobs.requeue_expired)
        except Exception:
            log.exception("re-queueing expired jobs failed")
        await asyncio.sleep(interval)


def _freeze_startup_objects() -> None:
    """Move everything built at start (routes, schemas, modules: ~150k objects) out of the collector's reach.

    A full collection scans them all and holds the GIL for ~60 ms, so every request in flight waited that long:
    the fetch tail (P6, docs/eta.md#fetch-latency). Frozen, they are never scanned again; they live as long as
    the process anyway.
    """
    gc.collect()
    gc.freeze()
