"""`GET /healthz`: ready when the database answers; needs no key."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from sdserver import __version__
from sdserver.api.deps import ServicesDep
from sdserver.api.reply_docs.admin import HEALTH_REPLIES

router = APIRouter(tags=["health"])


@router.get(
    "/healthz", summary="Readiness: 200 when the server and its database are up", **HEALTH_REPLIES.route_options()
)
async def healthz(services: ServicesDep) -> JSONResponse:
    def ping() -> None:
        with services.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    try:
        await run_in_threadpool(ping)
    except sa.exc.SQLAlchemyError:
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
    return JSONResponse({"status": "ok", "version": __version__})
