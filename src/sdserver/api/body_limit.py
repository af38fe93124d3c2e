"""Refuses oversized request bodies early (by Content-Length before reading, by counting while streaming) and
bodies that arrive too slowly (one deadline for the whole body, so a trickling client cannot hold a slot)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdserver.api.replies import error_response
from sdserver.config import Settings
from sdserver.errors import BodyTooLargeError, BodyTooSlowError


class BodyLimitMiddleware:
    """Pure ASGI so that nothing upstream buffers a body we are going to refuse."""

    def __init__(self, app: ASGIApp, *, settings: Settings, limit_for: Callable[[str], int]):
        self.app = app
        self.settings = settings
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = self.limit_for(path)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(scope, receive, send, limit)
            return

        received = 0
        too_large = False
        too_slow = False
        deadline = time.monotonic() + self.settings.body_read_timeout_s

        async def limited_receive() -> Message:
            nonlocal received, too_large, too_slow
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                too_slow = True
                raise _BodyTooSlow() from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await self._refuse(scope, receive, send, limit)
        except _BodyTooSlow:
            await self._refuse_slow(scope, receive, send)
        except Exception:
            # Frameworks may wrap our signal in their own error; the flags tell us what really happened.
            if too_large:
                await self._refuse(scope, receive, send, limit)
            elif too_slow:
                await self._refuse_slow(scope, receive, send)
            else:
                raise

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        error = BodyTooLargeError(f"Request body is larger than the {limit} byte limit")
        response = error_response(scope["path"], error, self.settings)
        # Tell the client we will not read the rest; uvicorn closes the connection after the reply.
        response.headers["Connection"] = "close"
        await response(scope, receive, send)

    async def _refuse_slow(self, scope: Scope, receive: Receive, send: Send) -> None:
        seconds = self.settings.body_read_timeout_s
        error = BodyTooSlowError(f"Request body did not arrive within {seconds:g} seconds")
        response = error_response(scope["path"], error, self.settings)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


class _BodyTooSlow(Exception):
    pass


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
