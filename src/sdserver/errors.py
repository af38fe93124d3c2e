"""The closed set of domain errors, each with a stable code; the API maps codes to replies in one table. Job
failures are data, not errors: their codes are the closed `JobErrorCode` enum shared by every engine."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class SdError(Exception):
    """Base of every error the server reports to a client. `code` is stable; `message` is for people."""

    code = "internal_error"
    default_message = "Internal server error"

    def __init__(self, message: str | None = None, *, field_errors: Mapping[str, list[str]] | None = None):
        self.message = message or self.default_message
        self.field_errors: dict[str, list[str]] = {k: list(v) for k, v in (field_errors or {}).items()}
        super().__init__(self.message)


class InvalidKeyError(SdError):
    code = "invalid_key"
    default_message = "Invalid Api Key"


class ForbiddenError(SdError):
    code = "forbidden"
    default_message = "This endpoint needs an admin key"


class ValidationError(SdError):
    """A request field broke a rule. The message names the field, the rule and the value."""

    code = "validation_error"

    @classmethod
    def for_field(cls, field: str, rule: str, value: object) -> ValidationError:
        text = f"{field}: {rule}, got {show_value(value)}"
        return cls(text, field_errors={field: [f"{rule}, got {show_value(value)}"]})


class BodyTooLargeError(SdError):
    code = "body_too_large"
    default_message = "Request body is too large"


class BodyTooSlowError(SdError):
    code = "body_too_slow"
    default_message = "Request body arrived too slowly"


class MissingFileError(SdError):
    """A multipart request without its file part."""

    code = "missing_file"
    default_message = "No file was sent in the 'file' form field"


class ImageError(SdError):
    """Base for everything wrong with an image a client gave us. `field` names where it came from."""

    code = "invalid_image"
    default_message = "The image could not be read"

    def __init__(self, message: str | None = None, *, field: str | None = None):
        text = message or self.default_message
        self.field = field
        super().__init__(f"{field}: {text}" if field else text, field_errors={field: [text]} if field else None)


class NotBase64Error(ImageError):
    code = "not_base64"
    default_message = "not valid base64 or a data URL"


class UnsupportedImageTypeError(ImageError):
    code = "unsupported_image_type"
    default_message = "the bytes are not a PNG, JPEG or WebP image"


class ImageDecodeError(ImageError):
    code = "image_decode_failed"
    default_message = "the image data is corrupt or truncated"


class ImageTooLargeError(ImageError):
    code = "image_too_large"
    default_message = "the image is larger than the byte limit"


class ImageTooManyPixelsError(ImageError):
    code = "image_too_many_pixels"
    default_message = "the image has more pixels than the limit"


class FetchError(ImageError):
    """A server-side fetch failed or was refused (SSRF guard, timeout, HTTP error, size cap)."""

    code = "fetch_failed"
    default_message = "Unable to fetch image from provided URL"

    def __init__(self, reason: str, *, field: str | None = None):
        # Clients match the vendor's exact message; the reason goes in the per-field bag.
        self.reason = reason
        self.field = field
        SdError.__init__(self, self.default_message, field_errors={field or "url": [reason]})


class NotFoundError(SdError):
    code = "not_found"
    default_message = "Request not found"


class ModelNotFoundError(SdError):
    code = "model_not_found"
    # Clients match the vendor's exact message; the id goes in the per-field bag.
    default_message = "Model id not found"

    @classmethod
    def for_id(cls, model_id: str, field: str = "model_id") -> ModelNotFoundError:
        return cls(
            field_errors={field: [f"no model {show_value(model_id)} on this server (get_all_models lists them)"]}
        )


class UnsupportedModelError(SdError):
    """Model files of a family or layout this server does not run; the message names what was found."""

    code = "unsupported_model"
    default_message = "The model is not of a supported family"


class FeatureUnavailableError(SdError):
    """An endpoint of the vendor's surface this server cannot serve (no model for it ships with it); the message
    says what is missing."""

    code = "feature_unavailable"
    default_message = "This feature is not available on this server"


class RateLimitedError(SdError):
    code = "rate_limited"
    default_message = "Rate limit exceeded"

    def __init__(self, message: str | None = None, *, retry_after_s: int = 10):
        self.retry_after_s = retry_after_s
        super().__init__(message)


class StorageError(SdError):
    """The object store could not be written or read; nothing was stored."""

    code = "storage_unavailable"
    default_message = "The object store is unavailable; nothing was stored, try again"


class StoreUnavailableError(SdError):
    """The job database did not answer (down, restarting, out of connections): the client should retry."""

    code = "store_unavailable"
    default_message = "The job database is unavailable (it may be restarting); try again shortly"


class JobTimeoutError(SdError):
    """A synchronous dialect request (OpenAI, A1111) waited its whole ceiling; its job was cancelled."""

    code = "job_timeout"
    default_message = "The job did not finish in time and was cancelled (SDSERVER_DIALECT_WAIT_S)"


class JobFailedError(SdError):
    """A synchronous dialect request's job failed; `job_code` is its JobErrorCode."""

    code = "job_failed"
    default_message = "The job failed"

    def __init__(self, message: str | None = None, *, job_code: str = "failed"):
        self.job_code = job_code
        super().__init__(message)


class LeaseLostError(SdError):
    """A worker acted on a job it no longer owns (its lease expired and the job was claimed again)."""

    code = "lease_lost"
    default_message = "The job's lease was lost"


class JobErrorCode(StrEnum):
    """Why a job failed: the `error_code` of a failed job's reply and webhook. Values are stable (clients match
    them); every engine, the worker loop and the job store say the same failure with the same code."""

    # The worker and the job store.
    ENGINE_ERROR = "engine_error"
    OUT_OF_MEMORY = "out_of_memory"
    DEVICE_FAILURE = "device_failure"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    WORKER_LOST = "worker_lost"
    # Models and their weights.
    MODEL_NOT_FOUND = "model_not_found"
    MODEL_LOAD_FAILED = "model_load_failed"
    MODEL_DELETED = "model_deleted"
    UNSUPPORTED_MODEL = "unsupported_model"
    MODEL_WEIGHTS_MISSING = "model_weights_missing"
    # Bucket-backed models: a file could not be pulled, or its bytes differ from the manifest (nothing installed).
    MODEL_PULL_FAILED = "model_pull_failed"
    MODEL_HASH_MISMATCH = "model_hash_mismatch"
    UNSUPPORTED_WEIGHTS = "unsupported_weights"
    CONTROLNET_NOT_FOUND = "controlnet_not_found"
    ADDON_NOT_FOUND = "addon_not_found"
    ADDON_LOAD_FAILED = "addon_load_failed"
    ADDON_INCOMPATIBLE = "addon_incompatible"
    # Parameters the engine cannot honour.
    INVALID_PARAMS = "invalid_params"
    UNKNOWN_SCHEDULER = "unknown_scheduler"
    UNSUPPORTED_SCHEDULER = "unsupported_scheduler"
    FACE_ENHANCE_UNAVAILABLE = "face_enhance_unavailable"
    # The job's stored input images.
    IMAGE_NOT_FOUND = "image_not_found"
    INVALID_IMAGE = "invalid_image"
    INPUT_TOO_LARGE = "input_too_large"
    # Replies only: a cancelled job, and a failed one whose row has no code.
    CANCELLED = "cancelled"
    FAILED = "failed"


def show_value(value: object, limit: int = 60) -> str:
    """How an error message quotes the value a client sent: repr, shortened; a missing value is "nothing"."""
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
