"""The error table's replies in the other dialects' shapes: OpenAI's `{"error": {...}}` and A1111's `{"detail"}`."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from fastapi.responses import JSONResponse

from sdserver import errors
from sdserver.errors import JobErrorCode

OPENAI_PREFIXES = ("/v1/images/", "/v1/models")
A1111_PREFIX = "/sdapi/"

# Job failures that the request caused (bad parameters or inputs), answered as the client's error, not ours.
_CLIENT_JOB_FAILURES = frozenset(
    {
        JobErrorCode.INVALID_PARAMS,
        JobErrorCode.UNKNOWN_SCHEDULER,
        JobErrorCode.UNSUPPORTED_SCHEDULER,
        JobErrorCode.FACE_ENHANCE_UNAVAILABLE,
        JobErrorCode.INVALID_IMAGE,
        JobErrorCode.INPUT_TOO_LARGE,
        JobErrorCode.ADDON_INCOMPATIBLE,
        JobErrorCode.UNSUPPORTED_MODEL,
    }
)
_MISSING_JOB_FAILURES = frozenset(
    {
        JobErrorCode.MODEL_NOT_FOUND,
        JobErrorCode.MODEL_DELETED,
        JobErrorCode.CONTROLNET_NOT_FOUND,
        JobErrorCode.ADDON_NOT_FOUND,
    }
)
# OpenAI's documented statuses; ours that it lacks become its nearest one.
_OPENAI_STATUS = {408: 400, 413: 400, 422: 400}
_OPENAI_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}


class Dialect(StrEnum):
    OPENAI = "openai"
    A1111 = "a1111"


def dialect_of(path: str) -> Dialect | None:
    if path.startswith(OPENAI_PREFIXES):
        return Dialect.OPENAI
    if path.startswith(A1111_PREFIX):
        return Dialect.A1111
    return None


def status_for(error: errors.SdError, native_status: int) -> int:
    """The status of a dialect reply; a failed job's status follows whose fault the failure was."""
    if isinstance(error, errors.JobFailedError):
        if error.job_code == JobErrorCode.CANCELLED:
            return 409
        if error.job_code in _CLIENT_JOB_FAILURES:
            return 400
        if error.job_code in _MISSING_JOB_FAILURES:
            return 404
    return native_status


def dialect_error(path: str, error: errors.SdError, native_status: int) -> JSONResponse | None:
    """The reply for `error` on a dialect's path, or None on the native paths."""
    dialect = dialect_of(path)
    if dialect is Dialect.OPENAI:
        return openai_error(error, status_for(error, native_status))
    if dialect is Dialect.A1111:
        return a1111_error(error, status_for(error, native_status))
    return None


def _detailed_message(error: errors.SdError) -> str:
    """The message, with the per-field details when the message does not already name them."""
    if not error.field_errors or isinstance(error, errors.ValidationError):
        return error.message
    details = "; ".join(f"{field}: {texts[0]}" for field, texts in error.field_errors.items() if texts)
    return f"{error.message} ({details})" if details else error.message


def _retry_headers(error: errors.SdError) -> dict[str, str]:
    return {"Retry-After": str(error.retry_after_s)} if isinstance(error, errors.RateLimitedError) else {}


def openai_error(error: errors.SdError, status: int) -> JSONResponse:
    status = _OPENAI_STATUS.get(status, status)
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    code = "invalid_api_key" if isinstance(error, errors.InvalidKeyError) else error.code
    if isinstance(error, errors.JobFailedError):
        code = error.job_code
    param = next(iter(error.field_errors), None)
    body = {"error": {"message": _detailed_message(error), "type": kind, "code": code, "param": param}}
    return JSONResponse(body, status_code=status, headers=_retry_headers(error))


def a1111_error(error: errors.SdError, status: int) -> JSONResponse:
    headers = _retry_headers(error)
    detail: Any
    if status in (400, 408, 413, 422) and error.field_errors:
        # FastAPI's validation shape, as A1111 answers a body that breaks its schema.
        status = 422 if status == 400 else status
        detail = [
            {"loc": ["body", *field.split(".")], "msg": text, "type": error.code}
            for field, texts in error.field_errors.items()
            for text in texts
        ]
    elif isinstance(error, errors.InvalidKeyError):
        detail = "Incorrect username or password"
        headers["WWW-Authenticate"] = "Basic"
    else:
        status = 422 if status == 400 else status
        detail = _detailed_message(error)
    return JSONResponse({"detail": detail, "error": error.code}, status_code=status, headers=headers)


def rename_fields(error: errors.SdError, names: dict[str, str]) -> errors.SdError:
    """The same error, its native field names replaced by the dialect's ones the client sent."""
    if not any(field in names for field in error.field_errors):
        return error
    error.field_errors = {names.get(field, field): texts for field, texts in error.field_errors.items()}
    if isinstance(error, errors.ValidationError | errors.ImageError):
        error.message = "; ".join(f"{field}: {texts[0]}" for field, texts in error.field_errors.items() if texts)
    return error
