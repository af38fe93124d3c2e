"""The one table that turns domain errors into replies: ModelsLab envelopes and Stablecog error bodies."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from sdserver import errors
from sdserver.api.dialect_errors import dialect_error, dialect_of
from sdserver.config import Settings
from sdserver.database import DATABASE_OUTAGES

log = logging.getLogger(__name__)

STABLECOG_PREFIX = "/v1/"


@dataclass(frozen=True)
class ErrorReply:
    """How one error code is answered: the real HTTP status, and Stablecog's error name."""

    http_status: int
    stablecog_error: str


_TABLE: dict[str, ErrorReply] = {
    errors.InvalidKeyError.code: ErrorReply(401, "Unauthorized"),
    errors.ForbiddenError.code: ErrorReply(403, "Forbidden"),
    errors.ValidationError.code: ErrorReply(400, "invalid_request"),
    errors.BodyTooLargeError.code: ErrorReply(413, "parse_error"),
    errors.BodyTooSlowError.code: ErrorReply(408, "request_timeout"),
    errors.MissingFileError.code: ErrorReply(400, "invalid_file"),
    errors.ImageError.code: ErrorReply(400, "invalid_file"),
    errors.NotBase64Error.code: ErrorReply(400, "invalid_file"),
    errors.UnsupportedImageTypeError.code: ErrorReply(400, "invalid_content_type"),
    errors.ImageDecodeError.code: ErrorReply(400, "invalid_file"),
    errors.ImageTooLargeError.code: ErrorReply(413, "parse_error"),
    errors.ImageTooManyPixelsError.code: ErrorReply(400, "invalid_file"),
    errors.FetchError.code: ErrorReply(400, "invalid_url"),
    errors.NotFoundError.code: ErrorReply(404, "not_found"),
    errors.ModelNotFoundError.code: ErrorReply(404, "not_found"),
    errors.UnsupportedModelError.code: ErrorReply(422, "unsupported_model"),
    errors.RateLimitedError.code: ErrorReply(429, "rate_limited"),
    errors.FeatureUnavailableError.code: ErrorReply(501, "not_implemented"),
    errors.StorageError.code: ErrorReply(503, "storage_unavailable"),
    errors.StoreUnavailableError.code: ErrorReply(503, "store_unavailable"),
    errors.JobTimeoutError.code: ErrorReply(504, "timeout"),
    errors.JobFailedError.code: ErrorReply(500, "job_failed"),
    errors.SdError.code: ErrorReply(500, "internal_error"),
}

# Stablecog documents these descriptions word for word; clients show them.
_STABLECOG_DESCRIPTIONS = {
    errors.UnsupportedImageTypeError.code: "Content type must be image/jpeg, image/png, or image/webp",
}


def error_reply_for(code: str) -> ErrorReply:
    return _TABLE.get(code, _TABLE[errors.SdError.code])


def error_codes_by_status(codes: Iterable[str]) -> dict[int, list[str]]:
    """Error codes grouped by the HTTP status the table answers them with (for /openapi.json); each code must be
    in the table, so a route cannot document an error this module would not answer as declared."""
    grouped: dict[int, list[str]] = {}
    for code in dict.fromkeys(codes):
        if code not in _TABLE:
            raise KeyError(f"error code {code!r} is not in the error table")
        grouped.setdefault(_TABLE[code].http_status, []).append(code)
    return dict(sorted(grouped.items()))


def is_stablecog_path(path: str) -> bool:
    return path.startswith(STABLECOG_PREFIX) and dialect_of(path) is None


def modelslab_error(error: errors.SdError, settings: Settings) -> JSONResponse:
    reply = error_reply_for(error.code)
    body: dict[str, Any] = {
        "status": "error",
        "message": error.message,
        # The vendor spells it "messege" on several endpoints; clients read either, so send both.
        "messege": error.message,
        "error_code": error.code,
    }
    if error.field_errors:
        body["errors"] = error.field_errors
    headers: dict[str, str] = {}
    if isinstance(error, errors.RateLimitedError):
        body["retry_after"] = error.retry_after_s
        headers["Retry-After"] = str(error.retry_after_s)
    # ModelsLab clients loop on the body and the official SDK gives up on any non-200, so 200 by default.
    status = reply.http_status if settings.real_status_codes else 200
    return JSONResponse(body, status_code=status, headers=headers)


def stablecog_error(error: errors.SdError) -> JSONResponse:
    reply = error_reply_for(error.code)
    body: dict[str, Any] = {"error": reply.stablecog_error}
    if not isinstance(error, errors.InvalidKeyError | errors.ForbiddenError):
        body["description"] = _STABLECOG_DESCRIPTIONS.get(error.code, error.message)
    return JSONResponse(body, status_code=reply.http_status)


def error_response(path: str, error: errors.SdError, settings: Settings) -> JSONResponse:
    dialect = dialect_error(path, error, error_reply_for(error.code).http_status)
    if dialect is not None:
        return dialect
    return stablecog_error(error) if is_stablecog_path(path) else modelslab_error(error, settings)


def install_error_handlers(app: FastAPI, settings: Settings) -> None:
    async def on_domain_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, errors.SdError)
        return error_response(request.url.path, exc, settings)

    async def on_database_outage(request: Request, exc: Exception) -> JSONResponse:
        # A known, temporary condition: one line in the log, and a reply the client can act on (retry).
        log.warning("database unavailable on %s: %s", request.url.path, str(exc).partition("\n")[0])
        return error_response(request.url.path, errors.StoreUnavailableError(), settings)

    async def on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, DATABASE_OUTAGES):
            # Raised outside the routes (a middleware), so only the catch-all sees it.
            return await on_database_outage(request, exc)
        log.exception("unhandled error on %s", request.url.path, exc_info=exc)
        error = errors.SdError()
        response = error_response(request.url.path, error, settings)
        response.status_code = 500
        return response

    async def on_request_validation(request: Request, exc: Exception) -> JSONResponse:
        # FastAPI's own checks of a typed path or query parameter answer through the table like every error.
        assert isinstance(exc, RequestValidationError)
        first: dict[str, Any] = next(iter(exc.errors()), {})
        field = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        error = errors.ValidationError.for_field(field, str(first.get("msg", "is not valid")), first.get("input"))
        return error_response(request.url.path, error, settings)

    app.add_exception_handler(errors.SdError, on_domain_error)
    app.add_exception_handler(RequestValidationError, on_request_validation)
    for outage in DATABASE_OUTAGES:
        app.add_exception_handler(outage, on_database_outage)
    app.add_exception_handler(Exception, on_unexpected_error)
