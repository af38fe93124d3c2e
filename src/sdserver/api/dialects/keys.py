"""The caller's key as the dialects' clients send it: `Authorization: Bearer` (OpenAI) or HTTP Basic (A1111's
`--api-auth`: the password is the key, the user name is free; a key as the user name with no password works too),
else any way the native routes accept."""

from __future__ import annotations

import base64
import binascii

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from sdserver.api.deps import get_services
from sdserver.api.params import find_api_key, read_params
from sdserver.auth import ApiKey


def basic_auth_key(authorization: str) -> str | None:
    """The key in an `Authorization: Basic` header: the password, or the user name when the password is empty."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, password = decoded.partition(":")
    return (password or user).strip() or None


async def dialect_caller(request: Request) -> ApiKey:
    """The live key of the request, or InvalidKeyError."""
    key = basic_auth_key(request.headers.get("authorization", ""))
    if key is None:
        key = find_api_key(request, await read_params(request))
    services = get_services(request)
    return await run_in_threadpool(services.keys.verify, key)
