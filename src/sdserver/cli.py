"""The `sdserver` command: `serve`, `worker`, `keys` and `models`. Builds the settings once and passes them down."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdserver import __version__
from sdserver.auth import KeyStore, Role
from sdserver.config import Settings
from sdserver.database import create_db_engine
from sdserver.errors import SdError
from sdserver.logs import LOG_FORMATS, LogFormat, configure_logging, uvicorn_log_config
from sdserver.running_servers import data_dir_warning, server_record
from sdserver.tiny_models import add_model_commands, run_models_command

log = logging.getLogger("sdserver")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdserver", description="Self-hosted Stable Diffusion API server.")
    parser.add_argument("--version", action="version", version=f"sdserver {__version__}")
    _add_data_dir(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start the API and local workers (default job store: embedded SQLite)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    _add_data_dir(serve)
    serve.add_argument("--workers", type=int, help="local worker processes to start (default 1; 0: API only)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", default="text", choices=LOG_FORMATS, help="text lines (default) or JSON lines")

    worker = commands.add_parser("worker", help="run one worker process (owns the device) against the job store")
    _add_data_dir(worker)
    worker.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    worker.add_argument("--log-format", default="text", choices=LOG_FORMATS, help="text lines (default) or JSON lines")

    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key and print it (shown once)")
    create.add_argument("--name", required=True)
    create.add_argument("--admin", action="store_true", help="an admin (enterprise) key")
    _add_data_dir(create)
    listing = key_commands.add_parser("list", help="list keys (never their secrets)")
    _add_data_dir(listing)
    revoke = key_commands.add_parser("revoke", help="revoke a key by id; it stops working at once")
    revoke.add_argument("id", type=int)
    _add_data_dir(revoke)

    models = commands.add_parser("models", help="manage diffusion models in the models folder (SDSERVER_MODELS_DIR)")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    for command in add_model_commands(model_commands):
        _add_data_dir(command)
    return parser


def _add_data_dir(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    # One resolution for every command and the server: this flag (before or after the command), else
    # SDSERVER_DATA_DIR, else ./data. A subcommand's flag must not reset the top-level one when absent: SUPPRESS.
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None if top else argparse.SUPPRESS,
        help="folder for the SQLite file and stored objects (default: SDSERVER_DATA_DIR, else ./data)",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Flags override SDSERVER_* environment variables, which override the defaults."""
    overrides: dict[str, Any] = {}
    for name in ("host", "port", "data_dir", "workers"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        if args.command == "serve":
            return serve(settings, log_level=args.log_level, log_format=args.log_format)
        if args.command == "worker":
            return worker(settings, log_level=args.log_level, log_format=args.log_format)
        _warn_about_data_dir(settings)
        if args.command == "models":
            return run_models_command(settings, args)
        return run_keys_command(settings, args)
    except SdError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


def _warn_about_data_dir(settings: Settings) -> None:
    """Keys and models written to a fresh data dir while the server reads another one are the newcomer's trap."""
    warning = data_dir_warning(settings)
    if warning is not None:
        print(warning, file=sys.stderr)


def run_keys_command(settings: Settings, args: argparse.Namespace) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    keys = KeyStore(create_db_engine(settings.sql_url))
    if args.keys_command == "create":
        key, secret = keys.create(args.name, Role.ADMIN if args.admin else Role.USER)
        print(secret)
        print(
            f"created {key.role.value} key #{key.id} '{key.name}' (the key is shown only once)",
            file=sys.stderr,
        )
    elif args.keys_command == "list":
        print(f"{'id':>4}  {'role':<5}  {'prefix':<9} {'created':<20} {'revoked':<20} name")
        for key in keys.list():
            revoked = key.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if key.revoked_at else "-"
            created = key.created_at.strftime("%Y-%m-%d %H:%M:%S")
            print(f"{key.id:>4}  {key.role.value:<5}  {key.prefix:<9} {created:<20} {revoked:<20} {key.name}")
    elif args.keys_command == "revoke":
        key = keys.revoke(args.id)
        print(f"revoked key #{key.id} '{key.name}'")
    return 0


def ensure_admin_key(settings: Settings, keys: KeyStore) -> None:
    """Install SDSERVER_ADMIN_KEY, or create and print one admin key on a store that has no keys."""
    if settings.admin_key is not None:
        key, created = keys.ensure(settings.admin_key.get_secret_value(), name="admin (env)", role=Role.ADMIN)
        if key.revoked_at is not None:
            log.warning("SDSERVER_ADMIN_KEY is revoked in the key store; it will not be accepted")
        elif created:
            log.info("installed the admin key from SDSERVER_ADMIN_KEY as key #%d", key.id)
        return
    if keys.count_active() == 0:
        _, secret = keys.create("admin (first start)", Role.ADMIN)
        # Printed once, to stdout, so `sdserver serve | head -1` style scripts can capture it.
        print(f"Admin API key (shown only once, keep it safe): {secret}", flush=True)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def serve(settings: Settings, *, log_level: str = "info", log_format: LogFormat = "text") -> int:
    import uvicorn

    from sdserver.api.app import create_app
    from sdserver.api.services import Services
    from sdserver.worker.supervisor import WorkerSupervisor

    configure_logging(log_level, log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    services = Services.build(settings)
    ensure_admin_key(settings, services.keys)
    app = create_app(settings, services)
    supervisor = WorkerSupervisor(settings, settings.workers, log_level=log_level, log_format=log_format)
    supervisor.start()
    log.info(
        "serving on %s with %d local worker(s) (data in %s)",
        settings.external_base_url,
        settings.workers,
        settings.data_dir.resolve(),
    )
    # uvicorn re-raises the SIGTERM it handled once it has shut down; with the default handler that would end the
    # process on the spot and skip the supervisor's stop below, orphaning the workers. Ours turns it into an exit.
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        # The record lets `keys`/`models` run on another data dir say where this server keeps its data.
        with server_record(settings):
            uvicorn.run(
                app,
                host=settings.host,
                port=settings.port,
                log_level=log_level,
                log_config=uvicorn_log_config(),
                proxy_headers=True,
                limit_concurrency=settings.max_connections,
            )
    except SystemExit:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        # Workers finish or release their current job: nothing is lost by stopping the server.
        supervisor.stop(timeout=30)
    return 0


def worker(settings: Settings, *, log_level: str = "info", log_format: LogFormat = "text") -> int:
    from sdserver.worker.main import run_worker

    configure_logging(log_level, log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return run_worker(settings)


if __name__ == "__main__":
    sys.exit(main())
