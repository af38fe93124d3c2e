"""Session-wide fixtures: real PostgreSQL and S3 servers started from their wheels, never skipped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.postgres_server import start_postgres
from tests.support.s3_server import S3Server, start_seaweedfs


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SQLAlchemy URL of a real PostgreSQL server that lives for the whole test session."""
    with start_postgres(tmp_path_factory.mktemp("pg")) as url:
        yield url


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real SeaweedFS S3 server (with an access key) that lives for the whole test session."""
    with start_seaweedfs(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def _server_records_outside_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Servers the tests start leave their records (see running_servers.py) in a temp folder, not in ~/.local."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
        yield
