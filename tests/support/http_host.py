"""A tiny threaded HTTP server on 127.0.0.1 that serves scripted routes and records every request it gets."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Reply:
    """A plain answer. `send_length=False` leaves out Content-Length (the body ends when the socket closes)."""

    body: bytes = b""
    content_type: str = "application/octet-stream"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    send_length: bool = True


@dataclass(frozen=True)
class Redirect:
    """A redirect to `location` (absolute, or relative to this host)."""

    location: str
    status: int = 302


@dataclass(frozen=True)
class Slow:
    """Sends `chunks` one by one, sleeping `delay_s` before each (no Content-Length)."""

    chunks: tuple[bytes, ...]
    delay_s: float
    content_type: str = "application/octet-stream"


@dataclass(frozen=True)
class Stream:
    """Sends `chunk` until `total` bytes went out, or forever when `total` is None, until the client leaves.

    `declare_length` sends a Content-Length header of that value (which may be a lie, e.g. huge).
    """

    total: int | None = None
    chunk: bytes = b"\0" * 65536
    declare_length: int | None = None
    delay_s: float = 0.0


@dataclass(frozen=True)
class Hang:
    """Accepts the request and never answers (until `seconds` pass or the host stops)."""

    seconds: float = 30.0


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the host saw it; header names are lowercase."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


# A callable route computes its reply from the request (e.g. fail twice, then succeed).
Route = Reply | Redirect | Slow | Stream | Hang | Callable[[RecordedRequest], Reply]


class HttpHost:
    """Context manager: `with HttpHost({"/a.png": Reply(data, "image/png")}) as host: host.url("/a.png")`.

    `routes` may be changed while the host runs (e.g. to point a redirect at `host.url(...)`).
    Unknown paths answer 404. `requests` lists what arrived, in order.
    """

    def __init__(self, routes: dict[str, Route] | None = None) -> None:
        self.routes: dict[str, Route] = dict(routes or {})
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        # A short poll interval keeps shutdown (each test's teardown) from waiting half a second.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def requests_to(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if urlsplit(r.path).path == path]

    def __enter__(self) -> HttpHost:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)


def _make_handler(host: HttpHost) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection, so a body without Content-Length ends at close.
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            request = RecordedRequest(self.command, self.path, headers, body)
            host._record(request)
            route = host.routes.get(urlsplit(self.path).path)
            # The client may hang up mid-answer (size cap, timeout): exactly what some tests provoke.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._answer(route, request)

        def _answer(self, route: Route | None, request: RecordedRequest) -> None:
            if route is None:
                self._send_reply(Reply(b"not found", "text/plain", status=404))
            elif isinstance(route, Reply):
                self._send_reply(route)
            elif isinstance(route, Redirect):
                self._send_reply(Reply(status=route.status, headers={"Location": route.location}))
            elif isinstance(route, Slow):
                self._send_head(200, {"Content-Type": route.content_type})
                for chunk in route.chunks:
                    time.sleep(route.delay_s)
                    self.wfile.write(chunk)
                    self.wfile.flush()
            elif isinstance(route, Stream):
                self._send_stream(route)
            elif isinstance(route, Hang):
                host._stopping.wait(route.seconds)
            else:
                self._send_reply(route(request))

        def _send_head(self, status: int, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()

        def _send_reply(self, reply: Reply) -> None:
            headers = {"Content-Type": reply.content_type, **reply.headers}
            if reply.send_length:
                headers["Content-Length"] = str(len(reply.body))
            self._send_head(reply.status, headers)
            if self.command != "HEAD":
                self.wfile.write(reply.body)

        def _send_stream(self, route: Stream) -> None:
            headers = {"Content-Type": "application/octet-stream"}
            if route.declare_length is not None:
                headers["Content-Length"] = str(route.declare_length)
            self._send_head(200, headers)
            sent = 0
            while (route.total is None or sent < route.total) and not host._stopping.is_set():
                chunk = route.chunk if route.total is None else route.chunk[: route.total - sent]
                self.wfile.write(chunk)
                sent += len(chunk)
                if route.delay_s:
                    time.sleep(route.delay_s)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    return Handler
