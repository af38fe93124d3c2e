"""Process logging: text or JSON lines, an access log that never shows a query string (keys travel there) and
keeps fetch polling at debug level, and the known-harmless library warnings silenced where they are raised."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Final, Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_LOGGER: Final = "uvicorn.access"
# Clients poll fetch every second or two; at info level those lines would bury everything else.
POLLING_PATH_PARTS: Final = ("/fetch",)
# transformers warns at import that its image processors fall back to PIL without torchvision. We never use them
# (and torchvision is deliberately absent), so the warning only misleads operators.
_HARMLESS: Final = {
    "transformers.utils.import_utils": "requires torchvision (not installed)",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class AccessLogFilter(logging.Filter):
    """uvicorn's access lines with the path only (no query: `?key=` would print a secret), and fetch polling
    demoted to debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn logs (client address, method, path with query, HTTP version, status).
        if not isinstance(args, tuple) or len(args) != 5:
            return True
        client, method, full_path, version, status = args
        path = str(full_path).split("?", 1)[0]
        record.args = (client, method, path, version, status)
        if any(part in path for part in POLLING_PATH_PARTS):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self._text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self._text not in record.getMessage()


def configure_logging(level: str = "info", log_format: LogFormat = "text") -> None:
    """Set up the root logger once per process (API or worker); uvicorn's loggers propagate to it."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    access = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(existing, AccessLogFilter) for existing in access.filters):
        access.addFilter(AccessLogFilter())
    silence_harmless_warnings()


def silence_harmless_warnings() -> None:
    for logger_name, text in _HARMLESS.items():
        logger = logging.getLogger(logger_name)
        if not any(isinstance(existing, _DropMessage) for existing in logger.filters):
            logger.addFilter(_DropMessage(text))


def uvicorn_log_config() -> dict[str, object]:
    """uvicorn's own logging config: its loggers hand records to the root handler set up above."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            ACCESS_LOGGER: {"handlers": [], "propagate": True},
        },
    }
