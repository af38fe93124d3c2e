"""/openapi.json: FastAPI's document, plus the request schemas of the bodies handlers validate themselves and the
reply schemas routes reference by name."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from sdserver.api.reply_docs.declare import component_schemas
from sdserver.api.schemas import request_schemas

# FastAPI documents a 422 with its own body on every route that has parameters; ours never send it: a request
# FastAPI cannot validate is answered through the error table (api.replies), like every other error.
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` (and so /openapi.json, /docs, /redoc) serve the finished document."""
    build = app.openapi

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _finish(build())
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]


def _finish(document: dict[str, Any]) -> dict[str, Any]:
    ref = f"#/components/schemas/{_FASTAPI_VALIDATION[0]}"
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            replies = operation.get("responses", {})
            if _json_schema(replies.get("422", {})).get("$ref") == ref:
                del replies["422"]
            for reply in replies.values():
                # FastAPI titles each route's reply after the route ("Response Text2Img Api V3 Text2Img Post"):
                # dropped, so an alias documents exactly the reply of its canonical operation.
                if _json_schema(reply).get("title", "").startswith("Response "):
                    del reply["content"]["application/json"]["schema"]["title"]
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in _FASTAPI_VALIDATION:
        schemas.pop(name, None)
    for name, schema in (request_schemas() | component_schemas()).items():
        schemas.setdefault(name, schema)
    return document


def _json_schema(reply: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = reply.get("content", {}).get("application/json", {}).get("schema", {})
    return schema
