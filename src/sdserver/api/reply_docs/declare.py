"""`Replies`: one route's documented reply (success shape, error codes) as FastAPI route options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Union

from pydantic import GetJsonSchemaHandler, TypeAdapter
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from sdserver import errors
from sdserver.api.replies import error_codes_by_status
from sdserver.api.reply_docs.envelopes import ErrorEnvelope

_UNEXPECTED = 500
_REF = "#/components/schemas/{model}"
# Shapes referenced from `responses` entries, by name: api.openapi_doc adds their schemas to the components.
_COMPONENTS: dict[str, Any] = {}
# Every route may answer these: a body it cannot parse, a bad key, a body too large or too slow, the database
# down, and the catch-all.
BASE_CODES: tuple[str, ...] = (
    errors.ValidationError.code,
    errors.InvalidKeyError.code,
    errors.BodyTooLargeError.code,
    errors.BodyTooSlowError.code,
    errors.StoreUnavailableError.code,
    errors.SdError.code,
)
ADMIN_CODES: tuple[str, ...] = (*BASE_CODES, errors.ForbiddenError.code)
# Routes that take a client image (checked, maybe fetched) and store it.
IMAGE_CODES: tuple[str, ...] = (
    errors.ImageError.code,
    errors.NotBase64Error.code,
    errors.UnsupportedImageTypeError.code,
    errors.ImageDecodeError.code,
    errors.ImageTooLargeError.code,
    errors.ImageTooManyPixelsError.code,
    errors.FetchError.code,
    errors.StorageError.code,
)
# Routes that queue a job on a model.
JOB_CODES: tuple[str, ...] = (
    errors.ModelNotFoundError.code,
    errors.UnsupportedModelError.code,
    errors.RateLimitedError.code,
)


class DocumentedAs:
    """Pydantic annotation: the annotated type keeps its validation and serialization (so the reply bytes stay
    exactly as the handler built them) while its JSON schema is `shape`'s."""

    def __init__(self, shape: Any) -> None:
        self._adapter: TypeAdapter[Any] = TypeAdapter(shape)

    def __get_pydantic_json_schema__(self, _core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return handler(self._adapter.core_schema)


@dataclass(frozen=True)
class Replies:
    """What a route answers: `ok` (a shape, or a Union of shapes) on success, and an `error` body for each of
    `codes`. ModelsLab routes answer errors with HTTP 200 unless `real_status_codes` is on, so their 200 reply
    is `ok` or the error envelope; `errors_at_200=False` (Stablecog) documents errors at their status only.
    `extra` documents other statuses with shapes of their own (e.g. /healthz's 503); `description` the 200 reply
    (default: the success shape's docstring)."""

    ok: Any
    codes: tuple[str, ...] = BASE_CODES
    error: Any = ErrorEnvelope
    errors_at_200: bool = True
    extra: dict[int, Any] = field(default_factory=dict)
    # What the 200 reply is, in /docs; default: the success shape's docstring.
    description: str = ""

    def route_options(self) -> dict[str, Any]:
        """`response_model` and `responses` for `add_api_route` (or a route decorator)."""
        shape = Union[self.ok, self.error] if self.errors_at_200 else self.ok  # noqa: UP007 (runtime values)
        responses: dict[int | str, dict[str, Any]] = {}
        for status, codes in error_codes_by_status(self.codes).items():
            when = " (with SDSERVER_REAL_STATUS_CODES; otherwise HTTP 200)" if self.errors_at_200 else ""
            if status == _UNEXPECTED:
                when = "; an unexpected failure answers HTTP 500 whatever the setting"
            responses[status] = json_reply(self.error, f"Error codes: {', '.join(codes)}{when}")
        for status, extra in self.extra.items():
            responses[status] = json_reply(extra, (extra.__doc__ or "").strip())
        described = (self.description or (getattr(self.ok, "__doc__", None) or "").strip() or "Success").rstrip(".")
        described += "."
        if self.errors_at_200:
            described += " Errors also answer HTTP 200 (the error envelope) unless SDSERVER_REAL_STATUS_CODES is on."
        return {
            "response_model": Annotated[dict[str, Any], DocumentedAs(shape)],
            "response_description": described,
            "responses": responses,
        }


def json_reply(shape: Any, description: str) -> dict[str, Any]:
    """A `responses` entry whose JSON body is `shape`, by reference to its component. (FastAPI's `model` key would
    build one pydantic field per route and status: seconds of start-up over the ~190 routes.)"""
    _COMPONENTS[shape.__name__] = shape
    schema = {"$ref": _REF.format(model=shape.__name__)}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def component_schemas() -> dict[str, dict[str, Any]]:
    """The JSON schemas of the shapes `json_reply` referenced (and of the shapes they use), by component name."""
    schemas: dict[str, dict[str, Any]] = {}
    for name, shape in _COMPONENTS.items():
        schema = TypeAdapter(shape).json_schema(ref_template=_REF, mode="serialization")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    return schemas
