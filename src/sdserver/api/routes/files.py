"""Serves objects of the local folder store at `/files/{key}`; temporary ones only with a valid signed link."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

from sdserver.api.deps import ServicesDep
from sdserver.api.reply_docs.admin import FILE_RESPONSES

router = APIRouter(tags=["files"])

_NOT_FOUND = {"status": "error", "message": "File not found"}


async def get_file(key: str, services: ServicesDep, expires: str | None = None, sig: str | None = None) -> Response:
    files = services.local_files
    # check_link refuses anything that is not a key this server made, so no client string becomes a path.
    if not files.check_link(key, expires, sig):
        return JSONResponse(_NOT_FOUND, status_code=404)
    path = files.path_for(key)
    if not path.is_file():
        return JSONResponse(_NOT_FOUND, status_code=404)
    cache = "private, max-age=3600" if expires else "public, max-age=31536000, immutable"
    return FileResponse(path, headers={"Cache-Control": cache, "X-Content-Type-Options": "nosniff"})


router.add_api_route(
    "/files/{key:path}",
    get_file,
    methods=["GET"],
    summary="Download a stored object",
    # No JSON on success: the bytes of the object, with its own media type.
    response_class=FileResponse,
    responses=FILE_RESPONSES,
)
router.add_api_route("/files/{key:path}", get_file, methods=["HEAD"], include_in_schema=False)
