"""Fixtures for HTTP-level API tests: a live server on the local store and on a real S3 server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from sdserver.auth import Role
from tests.support.live_server import LiveServer, make_settings, run_server
from tests.support.s3_server import S3Server


def s3_overrides(s3: S3Server) -> dict[str, Any]:
    """Settings that point the object store at a fresh bucket of the test S3 server."""
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
        region_name=s3.region,
    )
    client.create_bucket(Bucket=bucket)
    return {
        "storage": "s3",
        "s3_endpoint_url": s3.endpoint_url,
        "s3_bucket": bucket,
        "s3_region": s3.region,
        "s3_access_key_id": s3.access_key,
        "s3_secret_access_key": s3.secret_key,
    }


@pytest.fixture(params=["local", "s3"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    """The real app over real HTTP, once per object store."""
    overrides: dict[str, Any] = {}
    if request.param == "s3":
        overrides = s3_overrides(request.getfixturevalue("s3_server"))
    marker = request.node.get_closest_marker("settings")
    if marker:
        overrides.update(marker.kwargs)
    with run_server(make_settings(tmp_path, **overrides)) as live:
        yield live


@pytest.fixture
def local_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    """The real app on the local store only, for tests that are not about storage."""
    marker = request.node.get_closest_marker("settings")
    with run_server(make_settings(tmp_path, **(marker.kwargs if marker else {}))) as live:
        yield live


@pytest.fixture
def user_key(request: pytest.FixtureRequest) -> str:
    live: LiveServer = request.getfixturevalue("server" if "server" in request.fixturenames else "local_server")
    return live.new_key(Role.USER)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30, trust_env=False) as client:
        yield client
