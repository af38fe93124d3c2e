"""Hostile clients at the socket: slowloris headers and bodies, 100 MB pushed blindly; others stay served.

Figures (bytes a client got to send before the refusal, hold times) are printed with -s; docs/hostile-input.md
keeps them. The gap these tests pin down: uvicorn arms no timer before a request's headers are complete, and
nothing times out a body that trickles, so such a client holds its connection as long as it likes.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.support.image_files import png_bytes
from tests.support.live_server import LiveServer

MIB = 1024 * 1024
UPLOAD = "/api/v1/enterprise/upload_image"
# Longer than uvicorn's only timer (timeout_keep_alive, 5 s), which starts after a response.
HOLD_S = 6.5


def _connect(live: LiveServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", live.services.settings.port), timeout=10)


def _is_closed(sock: socket.socket) -> bool:
    """True once the server has closed or reset the connection (without blocking)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def _head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@contextmanager
def slow_clients(live: LiveServer, count: int, what: str, interval: float = 0.2) -> Iterator[list[socket.socket]]:
    """`count` connections that trickle one byte every `interval` s: of the headers, or of a declared body."""
    socks = [_connect(live) for _ in range(count)]
    stop = threading.Event()
    head = _head(UPLOAD, {"Content-Type": "application/json", "Content-Length": "100000"})
    for sock in socks:
        # The body variant completes its headers at once, so the app is already waiting for the body.
        sock.sendall(head if what == "body" else head[:20])

    def trickle() -> None:
        while not stop.wait(interval):
            for sock in socks:
                # A client the server closed is simply done.
                with contextlib.suppress(OSError):
                    sock.send(b"{" if what == "body" else b"X")

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        yield socks
    finally:
        stop.set()
        thread.join(timeout=5)
        for sock in socks:
            sock.close()


def _upload_latencies(live: LiveServer, key: str, rounds: int) -> list[float]:
    body = {"key": key, "base64_image": base64.b64encode(png_bytes(8, 8)).decode()}
    latencies = []
    with httpx.Client(timeout=10, trust_env=False) as http:
        for _ in range(rounds):
            started = time.monotonic()
            assert http.get(live.url("/healthz")).status_code == 200
            assert http.post(live.url(UPLOAD), json=body).json()["status"] == "success"
            latencies.append(time.monotonic() - started)
    return latencies


@pytest.mark.parametrize("what", ["headers", "body"])
def test_other_clients_are_served_while_64_slow_clients_trickle(
    local_server: LiveServer, user_key: str, what: str
) -> None:
    with slow_clients(local_server, 64, what) as socks:
        time.sleep(0.5)
        latencies = _upload_latencies(local_server, user_key, rounds=10)
        still_open = sum(not _is_closed(sock) for sock in socks)
    print(f"\n64 slow-{what} clients: other clients' worst latency {max(latencies) * 1000:.0f} ms")
    assert max(latencies) < 2.0, latencies
    assert still_open == 64, "the slow clients were meant to be still connected while others were served"


@pytest.mark.settings(body_read_timeout_s=3.0, real_status_codes=True)
def test_a_client_trickling_its_body_is_answered_408_and_disconnected(local_server: LiveServer) -> None:
    with slow_clients(local_server, 1, "body", interval=0.5) as (sock,):
        sock.settimeout(HOLD_S)
        reply = b""
        started = time.monotonic()
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                reply += chunk
        waited = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"body_too_slow" in reply and b"within 3 seconds" in reply
    assert waited < HOLD_S, "the server closes the connection after its answer"


@pytest.mark.xfail(
    strict=True,
    reason="gap: uvicorn has no timeout for incomplete request headers; run behind a proxy (docs/hostile-input.md)",
)
def test_a_client_trickling_its_headers_is_disconnected_after_a_read_timeout(local_server: LiveServer) -> None:
    with slow_clients(local_server, 1, "headers", interval=0.5) as (sock,):
        deadline = time.monotonic() + HOLD_S
        while time.monotonic() < deadline and not _is_closed(sock):
            time.sleep(0.1)
        closed = _is_closed(sock)
    # Let the server log its side of the hang-up first: Python 3.11's traceback formatting and pytest's
    # source parsing race on the ast module's state when they run in two threads at once.
    time.sleep(0.5)
    assert closed, f"a slow-headers client still holds its connection after {HOLD_S} s"


def _push_blindly(live: LiveServer, path: str, headers: dict[str, str], total: int, chunked: bool) -> tuple[int, bytes]:
    """Send `total` bytes as fast as the socket takes them, never waiting; returns (bytes sent, reply head)."""
    sent = 0
    block = b"a" * MIB
    with _connect(live) as sock:
        sock.sendall(_head(path, headers))
        try:
            while sent < total:
                sock.sendall(f"{len(block):x}\r\n".encode() + block + b"\r\n" if chunked else block)
                sent += len(block)
        except OSError:
            pass  # reset by the server once it has answered: the rest is never read
        sock.settimeout(5)
        try:
            reply = sock.recv(4096)
        except OSError:
            reply = b""
    return sent, reply


@pytest.mark.settings(real_status_codes=True)
@pytest.mark.parametrize(
    ("path", "chunked"),
    [(UPLOAD, False), (UPLOAD, True), ("/v1/image/upload", False), ("/v1/image/upload", True)],
    ids=["modelslab-declared", "modelslab-chunked", "stablecog-declared", "stablecog-chunked"],
)
def test_a_100_mb_body_pushed_blindly_is_cut_off_near_the_limit(
    local_server: LiveServer, path: str, chunked: bool
) -> None:
    headers = {"Content-Type": "application/json"}
    headers.update({"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(100 * MIB)})
    probe: list[float] = []

    def probe_health() -> None:
        with httpx.Client(timeout=10, trust_env=False) as http:
            started = time.monotonic()
            assert http.get(local_server.url("/healthz")).status_code == 200
            probe.append(time.monotonic() - started)

    started = time.monotonic()
    prober = threading.Timer(0.2, probe_health)
    prober.start()
    sent, reply = _push_blindly(local_server, path, headers, 100 * MIB, chunked)
    prober.join(timeout=15)
    elapsed = time.monotonic() - started
    limit = local_server.services.settings.max_body_bytes
    print(f"\n100 MB {'chunked' if chunked else 'declared'} to {path}: {sent / MIB:.0f} MiB sent in {elapsed:.1f} s")
    # The socket buffers of loopback absorb a few MiB after the server stops reading.
    assert sent < limit + 16 * MIB, f"{sent} bytes went in before the refusal"
    if reply:
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert probe and probe[0] < 2.0, "the server stopped answering others during the push"
