"""Reads a request's parameters the way real clients send them: query < form < JSON, and the API key."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from sdserver.errors import ValidationError

_URLENCODED = "application/x-www-form-urlencoded"
_MULTIPART = "multipart/form-data"
# Starlette refuses a form field over 1 MiB by default: a base64 image of any real size. The body-limit
# middleware already caps the whole body (SDSERVER_MAX_BODY_BYTES), so a field may be as large as the body.
_FORM_PART_LIMIT = 2**40


@dataclass
class RequestParams:
    """The merged parameters of one request, plus the file parts of a multipart body."""

    values: dict[str, Any]
    body_key: str | None = None
    files: dict[str, UploadFile] = field(default_factory=dict)


async def read_params(request: Request) -> RequestParams:
    """Merge query, form and JSON parameters (later ones win); parsed once per request."""
    cached = getattr(request.state, "params", None)
    if isinstance(cached, RequestParams):
        return cached
    values: dict[str, Any] = dict(request.query_params)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        body, files = await _read_body(request, content_type)
    except ClientDisconnect:
        # Nobody will read the answer; an SdError is answered quietly instead of logged as a server error.
        raise ValidationError.for_field("body", "must arrive complete", "the client disconnected") from None
    values.update(body)
    key = body.get("key")
    params = RequestParams(values=values, body_key=key if isinstance(key, str) and key else None, files=files)
    request.state.params = params
    return params


async def _read_body(request: Request, content_type: str) -> tuple[dict[str, Any], dict[str, UploadFile]]:
    body: dict[str, Any] = {}
    files: dict[str, UploadFile] = {}
    raw = b"" if content_type == _MULTIPART else await request.body()
    # `curl -d '{"key": ...}'` labels a JSON body as a form: the body's first character decides, not the label.
    if content_type == _MULTIPART or (content_type == _URLENCODED and not raw.lstrip().startswith(b"{")):
        try:
            form = await request.form(max_part_size=_FORM_PART_LIMIT)
        except HTTPException as exc:
            # Starlette's answer to a malformed multipart body; ours goes through the error table like any other.
            raise ValidationError.for_field("body", "must be well-formed form data", exc.detail) from None
        for name, item in form.multi_items():
            if isinstance(item, UploadFile):
                files.setdefault(name, item)
            else:
                body[name] = item
    elif raw.strip():
        body = _parse_json_object(raw)
    return body, files


def _parse_json_object(raw: bytes) -> dict[str, Any]:
    # Many clients (the vendor's PHP and Java snippets among them) send JSON without a JSON content type.
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationError.for_field("body", "must be a JSON object", f"invalid JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise ValidationError.for_field("body", "must be a JSON object", type(parsed).__name__)
    return parsed


def find_api_key(request: Request, params: RequestParams) -> str | None:
    """The key as clients send it: body `key`, else header `key`, else `Authorization: Bearer`, else `?key=`."""
    if params.body_key:
        return params.body_key.strip()
    header = request.headers.get("key")
    if header:
        return header.strip()
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    query = request.query_params.get("key")
    return query.strip() if query else None
