"""The one error table in the OpenAI and A1111 shapes: statuses, types, codes and the field a client broke."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sdserver import errors
from sdserver.api.dialect_errors import dialect_error, rename_fields
from sdserver.api.replies import error_reply_for


def reply(path: str, error: errors.SdError) -> tuple[int, Any]:
    response = dialect_error(path, error, error_reply_for(error.code).http_status)
    assert response is not None
    return response.status_code, json.loads(bytes(response.body))


def test_native_and_stablecog_paths_are_not_dialects() -> None:
    assert dialect_error("/api/v6/images/text2img", errors.InvalidKeyError(), 401) is None
    assert dialect_error("/v1/image/upload", errors.InvalidKeyError(), 401) is None


def test_openai_shape_names_the_param_and_keeps_documented_statuses() -> None:
    status, body = reply("/v1/images/generations", errors.ValidationError.for_field("size", "must be WxH", "big"))
    assert status == 400
    assert body == {
        "error": {
            "message": "size: must be WxH, got 'big'",
            "type": "invalid_request_error",
            "code": "validation_error",
            "param": "size",
        }
    }
    assert reply("/v1/images/edits", errors.ImageTooLargeError(field="image"))[0] == 400  # 413 is not OpenAI's
    assert reply("/v1/images/edits", errors.InvalidKeyError())[1]["error"]["code"] == "invalid_api_key"
    status, body = reply("/v1/images/generations", errors.ModelNotFoundError.for_id("x", field="model"))
    assert status == 404 and "no model 'x'" in body["error"]["message"] and body["error"]["param"] == "model"


@pytest.mark.parametrize(
    ("job_code", "status"),
    [("invalid_params", 400), ("model_not_found", 404), ("cancelled", 409), ("out_of_memory", 500)],
)
def test_a_failed_job_is_the_clients_error_only_when_the_request_caused_it(job_code: str, status: int) -> None:
    error = errors.JobFailedError("job 1 failed", job_code=job_code)
    openai_status, body = reply("/v1/images/generations", error)
    assert openai_status == status and body["error"]["code"] == job_code
    a1111_status, _ = reply("/sdapi/v1/txt2img", errors.JobFailedError("job 1 failed", job_code=job_code))
    assert a1111_status == (422 if status == 400 else status)


def test_a1111_shape_is_fastapis_detail() -> None:
    status, body = reply("/sdapi/v1/txt2img", errors.ValidationError.for_field("steps", "must be at least 1", 0))
    assert status == 422 and body["detail"] == [
        {"loc": ["body", "steps"], "msg": "must be at least 1, got 0", "type": "validation_error"}
    ]
    response = dialect_error("/sdapi/v1/progress", errors.InvalidKeyError(), 401)
    assert response is not None and response.status_code == 401 and response.headers["WWW-Authenticate"] == "Basic"
    assert reply("/sdapi/v1/txt2img", errors.JobTimeoutError())[0] == 504
    assert reply("/sdapi/v1/txt2img", errors.RateLimitedError(retry_after_s=3))[0] == 429


def test_native_field_names_become_the_dialects() -> None:
    error = rename_fields(
        errors.ValidationError.for_field("num_inference_steps", "must be at least 1", 0),
        {"num_inference_steps": "steps"},
    )
    assert error.field_errors == {"steps": ["must be at least 1, got 0"]} and error.message.startswith("steps: ")
