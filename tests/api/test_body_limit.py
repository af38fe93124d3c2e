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


def _read_reply(sock: socket.socket, timeout: float, on_first_bytes: threading.Event | None = None) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        if on_first_bytes is not None:
            on_first_bytes.set()
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
    sent_when_answered = 0
    chunk = b"a" * (MIB // 4)
    with socket.create_connection(("127.0.0.1", local_server.services.settings.port)) as sock:
        # A small send buffer keeps what sits in the kernel (not yet read by the server) small, so the count
        # below measures the server's reading, not loopback buffering.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 128 * 1024)
        sock.sendall(
            _request_head(
                "/api/v1/enterprise/upload_image",
                {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            )
        )
        answered = threading.Event()

        def pump() -> None:
            nonlocal sent
            try:
                while not answered.is_set() and sent < 100 * MIB:
                    sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    sent += len(chunk)
            except OSError:
                pass  # the server closed the connection: exactly what we want

        writer = threading.Thread(target=pump, daemon=True)
        writer.start()

        def note_answer() -> None:
            nonlocal sent_when_answered
            answered.wait(timeout=30)
            sent_when_answered = sent

        watcher = threading.Thread(target=note_answer, daemon=True)
        watcher.start()
        reply = _read_reply(sock, timeout=20, on_first_bytes=answered)
        answered.set()
        watcher.join(timeout=10)
        writer.join(timeout=10)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    limit = local_server.services.settings.max_body_bytes
    assert sent_when_answered < limit + 8 * MIB, f"sent {sent_when_answered} bytes before the refusal"
