"""Oversized bodies are refused early, by declared length or while streaming, without reading them all."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.support.live_server import LiveServer

MIB = 1024 * 1024


def _request_head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_reply(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/api/v1/enterprise/upload_image", b"HTTP/1.1 200"), ("/v1/image/upload", b"HTTP/1.1 413")],
    ids=["modelslab", "stablecog"],
)
def test_a_declared_100_mb_body_is_refused_before_it_is_sent(
    local_server: LiveServer, path: str, expected: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", local_server.services.settings.port)) as sock:
        sock.sendall(_request_head(path, {"Content-Type": "application/json", "Content-Length": str(100 * MIB)}))
        started = time.monotonic()
        reply = _read_reply(sock, timeout=5)
    assert time.monotonic() - started < 5
    assert reply.startswith(expected), reply[:200]
    assert b"too large" in reply or b"larger than" in reply


@pytest.mark.settings(real_status_codes=True)
def test_a_streamed_body_is_cut_off_near_the_limit(local_server: LiveServer) -> None:
    """Chunked upload with no length: the server answers 413 after the limit, not after 100 MB."""
    sent = 0
    chunk = b"a" * MIB
    with socket.create_connection(("127.0.0.1", local_server.services.settings.port)) as sock:
        sock.sendall(
            _request_head(
                "/api/v1/enterprise/upload_image",
                {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            )
        )
        stop = threading.Event()

        def pump() -> None:
            nonlocal sent
            try:
                while not stop.is_set() and sent < 100 * MIB:
                    sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    sent += len(chunk)
            except OSError:
                pass  # the server closed the connection: exactly what we want

        writer = threading.Thread(target=pump, daemon=True)
        writer.start()
        reply = _read_reply(sock, timeout=20)
        stop.set()
        writer.join(timeout=10)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    limit = local_server.services.settings.max_body_bytes
    assert sent < limit + 8 * MIB, f"sent {sent} bytes before the refusal"
