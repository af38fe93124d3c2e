"""Which `sdserver serve` processes run on this machine: each leaves a small record in a per-user folder, so a CLI
command pointed at the wrong data dir can say where the running server keeps its data."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from sdserver.config import Settings

# A record whose process answers no health check this fast is stale (a crash, or a pid reused after a reboot).
HEALTH_TIMEOUT_S = 0.5


@dataclass(frozen=True)
class ServerRecord:
    """What a running server tells other processes about itself."""

    pid: int
    url: str
    data_dir: str
    # The SQLite file under data_dir holds the keys and models; with PostgreSQL the data dir does not matter.
    sqlite: bool


def records_dir(settings: Settings) -> Path:
    """SDSERVER_SERVERS_DIR, else `$XDG_STATE_HOME/sdserver/servers` (~/.local/state/sdserver/servers)."""
    if settings.servers_dir is not None:
        return settings.servers_dir
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "sdserver" / "servers"


@contextlib.contextmanager
def server_record(settings: Settings) -> Iterator[Path | None]:
    """Leave this process's record while the block runs. Best effort: a read-only home must not stop a server."""
    path = records_dir(settings) / f"{os.getpid()}.json"
    # The address a local CLI can reach: a server bound to every interface still answers on loopback.
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host  # noqa: S104 - compared, not bound
    record = ServerRecord(
        pid=os.getpid(),
        url=f"http://{host}:{settings.port}",
        data_dir=str(settings.data_dir.resolve()),
        sqlite=settings.database_url is None,
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(record)))
    except OSError:
        yield None
        return
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def running_servers(settings: Settings) -> list[ServerRecord]:
    """Servers whose process is alive and whose health check answers; stale records are removed."""
    folder = records_dir(settings)
    found: list[ServerRecord] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = _read(path)
        if record is None or not _alive(record.pid):
            path.unlink(missing_ok=True)
            continue
        if _answers(record.url):
            found.append(record)
    return found


def _read(path: Path) -> ServerRecord | None:
    try:
        return ServerRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=HEALTH_TIMEOUT_S).status_code == httpx.codes.OK
    except httpx.HTTPError:
        return False


def data_dir_warning(settings: Settings) -> str | None:
    """A warning when this command would create a new, empty SQLite store while a server runs on another one."""
    if settings.database_url is not None or settings.sqlite_file.exists():
        return None
    here = str(settings.data_dir.resolve())
    others = [record for record in running_servers(settings) if not record.sqlite or record.data_dir != here]
    if not others:
        return None
    server = others[0]
    start = (
        f"warning: {here} holds no database, so this command starts a new one that the server running at {server.url}"
    )
    if not server.sqlite:
        return f"{start} does not read (it uses SDSERVER_DATABASE_URL); set the same SDSERVER_DATABASE_URL here"
    return (
        f"{start} does not read (its data dir is {server.data_dir}); "
        f"pass --data-dir {server.data_dir} or set SDSERVER_DATA_DIR={server.data_dir}"
    )
