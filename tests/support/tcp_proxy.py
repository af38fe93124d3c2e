"""A toggleable TCP proxy on 127.0.0.1 for fault tests: forward, refuse new connections, hold them, or cut them."""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from enum import StrEnum
from types import TracebackType

_POLL_S = 0.05
_CHUNK = 65536


class Mode(StrEnum):
    """What happens to a new connection."""

    FORWARD = "forward"  # piped to the target
    REFUSE = "refuse"  # nothing listens on the port: connect() fails with ECONNREFUSED
    HOLD = "hold"  # accepted, read and never answered: a server that hangs


class TcpProxy:
    """`with TcpProxy(host, port) as proxy:` listens on `proxy.port` and forwards to `host:port`.

    `set_mode` changes how new connections are treated; `cut()` resets every open one (forwarded or held).
    The port stays the same across a refuse and a resume, so clients keep one endpoint.
    `held_heads` holds the first bytes of each held connection, to wait until a given request is in flight.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._lock = threading.Lock()
        self._mode = Mode.FORWARD
        self._open: set[socket.socket] = set()
        self._held_heads: list[bytes] = []
        self._stopping = threading.Event()
        self._listener: socket.socket | None = self._listen(0)
        self.port = int(self._listener.getsockname()[1])
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def held_heads(self) -> list[bytes]:
        with self._lock:
            return list(self._held_heads)

    def set_mode(self, mode: Mode) -> None:
        """Switch how new connections are treated; open ones are left alone (see `cut`)."""
        with self._lock:
            self._mode = mode
            if mode is Mode.REFUSE and self._listener is not None:
                # Closing the listener makes the kernel refuse at once; the backlog's connections are reset.
                _close(self._listener)
                self._listener = None
            elif mode is not Mode.REFUSE and self._listener is None:
                self._listener = self._listen(self.port)

    def cut(self) -> int:
        """Reset every open connection (both sides); returns how many sockets were still open."""
        with self._lock:
            doomed, self._open = self._open, set()
        for sock in doomed:
            _reset(sock)
        return len(doomed)

    def outage(self) -> None:
        """The server is gone: new connections are refused and open ones are reset."""
        self.set_mode(Mode.REFUSE)
        self.cut()

    def hang(self) -> None:
        """The server hangs: open connections (a client's keep-alive pool) are reset, new ones are held."""
        self.set_mode(Mode.HOLD)
        self.cut()

    def wait_for_held(self, needle: bytes, timeout_s: float) -> bytes:
        """Wait until a held connection's first bytes contain `needle`; return those bytes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for head in self.held_heads:
                if needle in head:
                    return head
            time.sleep(0.01)
        raise AssertionError(f"no held connection sent {needle!r} within {timeout_s} s: {self.held_heads}")

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        with self._lock:
            if self._listener is not None:
                _close(self._listener)
                self._listener = None
        self.cut()

    # --- internals

    @staticmethod
    def _listen(port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Rebinding the same port after a refuse, while old connections sit in TIME_WAIT.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        listener.setblocking(False)
        return listener

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                listener = self._listener
            if listener is None:
                self._stopping.wait(_POLL_S)
                continue
            try:
                ready, _, _ = select.select([listener], [], [], _POLL_S)
                if not ready:
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):
                continue  # the listener was closed under us by a refuse
            client.setblocking(True)
            with self._lock:
                mode = self._mode
                self.accepted += 1
                self._open.add(client)
            if mode is Mode.HOLD:
                threading.Thread(target=self._hold, args=(client,), daemon=True).start()
            else:
                threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _hold(self, client: socket.socket) -> None:
        """Read what the client sends, keep the first bytes for `held_heads`, never answer."""
        index: int | None = None
        head = b""
        while not self._stopping.is_set():
            try:
                data = client.recv(_CHUNK)
            except OSError:
                return
            if not data:
                return
            if len(head) < 1024:
                head = (head + data)[:1024]
                with self._lock:
                    if index is None:
                        index = len(self._held_heads)
                        self._held_heads.append(head)
                    else:
                        self._held_heads[index] = head

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._target, timeout=5)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        with self._lock:
            if client not in self._open:  # cut while we connected
                _reset(upstream)
                return
            self._open.add(upstream)
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        """Copy bytes until either side ends; then end both, so the peer sees the close."""
        try:
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._open.difference_update((source, sink))
        for sock in (source, sink):
            _close(sock)


def _reset(sock: socket.socket) -> None:
    """Close with an RST (linger 0), as a crashed server's kernel would: the peer sees a reset, not an EOF."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
